"""The cosine warm-up/restart schedule against DPPO's worked example (docs/algorithms.md#learning-rate-schedule)."""

import math

import pytest
import torch

from agent.errors import ConfigError
from agent.schedulers import CosineWarmupRestarts


def _sched(max_lr=1e-4, **kw):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=max_lr)
    return opt, CosineWarmupRestarts(opt, **kw)


def test_warmup_then_cosine_then_restart():
    opt, s = _sched(first_cycle_steps=100, warmup_steps=10, min_lr=1e-5)
    lrs = [s.get_last_lr()[0]]
    for _ in range(12):
        s.step()
        lrs.append(s.get_last_lr()[0])
    expected = [1e-5 + 9e-5 * n / 10 for n in range(10)] + [
        1e-4,
        1e-5 + 9e-5 * (1 + math.cos(math.pi / 90)) / 2,
    ]
    assert lrs[:12] == pytest.approx(expected, rel=1e-9)
    assert lrs[11] == pytest.approx(9.99e-5, rel=1e-3)
    for _ in range(100 - 12):
        s.step()
    assert s.get_last_lr()[0] == pytest.approx(1e-5)  # itr 100: restart


def test_constant_when_min_equals_max_and_state_round_trip():
    opt, s = _sched(first_cycle_steps=50, warmup_steps=0, min_lr=1e-4)
    for _ in range(7):
        s.step()
        assert s.get_last_lr()[0] == pytest.approx(1e-4)
    _, s2 = _sched(first_cycle_steps=50, warmup_steps=0, min_lr=1e-4)
    s2.load_state_dict(s.state_dict())
    assert s2.n_steps == 7


def test_lr_below_min_quirk_is_reproduced():
    # square/transport UNet: actor_lr 2e-5 < min_lr 1e-4, warmup 0: 1e-4 at itr 0, ~2e-5 at itr 1
    _, s = _sched(max_lr=2e-5, first_cycle_steps=201, warmup_steps=0, min_lr=1e-4)
    assert s.get_last_lr()[0] == pytest.approx(1e-4)
    s.step()
    assert s.get_last_lr()[0] == pytest.approx(2e-5, rel=1e-3)


def test_bad_values():
    with pytest.raises(ConfigError, match="warmup_steps"):
        _sched(first_cycle_steps=10, warmup_steps=-1)
    with pytest.raises(ConfigError, match="first_cycle_steps"):
        _sched(first_cycle_steps=0)


def test_warmup_longer_than_the_cycle_is_shortened():
    # robomimic: warmup 100 epochs; a 2-epoch run warms up over 1 step: min_lr, then max_lr at the cycle's end
    _, s = _sched(max_lr=1e-4, first_cycle_steps=2, warmup_steps=100, min_lr=1e-5)
    assert s.warmup_steps == 1
    lrs = [s.get_last_lr()[0]]
    s.step()
    lrs.append(s.get_last_lr()[0])
    assert lrs == pytest.approx([1e-5, 1e-4])
