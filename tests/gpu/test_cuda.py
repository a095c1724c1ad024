"""CPU against CUDA: each policy family's pretraining step and sampling call (flow policies included), and one PPO
update of DPPO and of the flow policy, give the same numbers on both devices.

Both runs start from the same weights (built on the CPU from the same seed, then moved) and draw the same random
numbers: the `host_rng` fixture makes every `torch.rand/randn/randint/randperm/multinomial` call (and the `*_like`
forms) draw on the CPU generator and move the result to the device it was asked for. TF32 is switched off, so
what differs between the devices is float32 rounding only (summation order, fused kernels).

Run with `python -m pytest -q -m gpu tests/gpu` (skipped without CUDA). `DPPO_TEST_DEVICE=cpu` compares a second
CPU run against the first instead: a dry run of these tests on a machine without a GPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from agent.config import CFG_ROOT, compose
from agent.finetune.base import Experiment
from agent.finetune.buffer import RolloutBuffer
from agent.finetune.loading import build_policy
from agent.finetune.ppo import PPO
from agent.pretrain import PretrainAgent
from tests.conftest import make_demo_npz

DEVICE = torch.device(os.environ.get("DPPO_TEST_DEVICE", "cuda"))

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        DEVICE.type == "cuda" and not torch.cuda.is_available(),
        reason="needs CUDA: torch.cuda.is_available() is false (DPPO_TEST_DEVICE=cpu dry-runs these tests on the CPU)",
    ),
]

CAN = CFG_ROOT / "robomimic/pretrain/can"
FAMILIES = (
    "diffusion_mlp",
    "diffusion_unet",
    "diffusion_transformer",
    "gaussian_mlp",
    "gaussian_transformer",
    "gmm_mlp",
    "gmm_transformer",
    "reflow_mlp",
    "shortcut_mlp",
)
HOPPER_FT = CFG_ROOT / "gym/finetune/hopper-v2"
STEPS, ENVS = 5, 8  # the synthetic rollout of the DPPO test: S chunks in each of E envs


def on_cpu(x: Tensor) -> Tensor:
    return x.detach().to("cpu")


def first_moments(optimizer: torch.optim.Optimizer, params: list[Tensor]) -> list[Tensor | None]:
    """AdamW's first moment of each parameter ((1 - beta1) g after one step), None where it never stepped."""
    return [optimizer.state.get(p, {}).get("exp_avg") for p in params]


def assert_adam_step_close(
    params: tuple[list[Tensor], list[Tensor]], moments: tuple[list[Tensor | None], list[Tensor | None]]
) -> None:
    """Parameters after one AdamW step from equal weights, `(device run, CPU run)` each, with their `first_moments`.

    The gradients (the first moments) must agree to float32 rounding; so must the parameters, except where a
    gradient is no larger than its own rounding error (or 1e-6): there Adam's step g / (|g| + eps) is decided by
    the rounding. Parameters that were not stepped must be equal.
    """
    assert len(params[0]) == len(params[1]) == len(moments[0]) == len(moments[1])
    for i, (p_dev, p_cpu, m_dev, m_cpu) in enumerate(zip(*params, *moments)):
        p, ref = on_cpu(p_dev), p_cpu.detach()
        if m_cpu is None:
            assert m_dev is None, f"parameter {i} was stepped on {DEVICE} only"
            torch.testing.assert_close(p, ref, rtol=0, atol=0, msg=lambda s, i=i: f"parameter {i} (no step): {s}")
            continue
        assert m_dev is not None, f"parameter {i} was stepped on the CPU only"
        m, m_ref = on_cpu(m_dev), m_cpu
        scale = float(m_ref.abs().max())
        torch.testing.assert_close(m, m_ref, rtol=1e-3, atol=1e-4 * scale + 1e-9, msg=lambda s, i=i: f"grad {i}: {s}")
        undecided = m_ref.abs() <= torch.maximum(10 * (m - m_ref).abs(), torch.full_like(m_ref, 1e-6))
        close = torch.isclose(p, ref, rtol=1e-5, atol=1e-6) | undecided
        assert bool(close.all()), f"parameter {i}: {int((~close).sum())} of {p.numel()} entries differ after the step"


# ----------------------------------------------------------------------------------------------------------------
# pretraining step and sampling, every policy family


def pretrain_agent(name: str, device: torch.device, tmp: Path) -> PretrainAgent:
    """The `can` pretraining agent of `pre_<name>` on a generated dataset; dropout off (eval mode) so that both
    devices compute the same function."""
    base = compose(CAN, f"pre_{name}", ["device=cpu", "wandb=null"])
    data = Path(base.train_dataset_path)
    if not data.is_file():
        make_demo_npz(data, base.obs_dim, base.action_dim, (30, 30))
    overrides = [f"device={device}", "wandb=null", "train.batch_size=16", f"logdir={tmp}/{name}_{device.type}"]
    agent = PretrainAgent(compose(CAN, f"pre_{name}", overrides))
    agent.model.eval()
    return agent


@pytest.mark.parametrize("name", FAMILIES)
def test_pretrain_step_and_sampling_match_the_cpu(name: str, tmp_dirs: Path, host_rng: None) -> None:
    agents = [pretrain_agent(name, DEVICE, tmp_dirs), pretrain_agent(name, torch.device("cpu"), tmp_dirs)]
    losses, samples = [], []
    for agent in agents:
        batch = agent.dataset.get_batch(torch.arange(16, device=agent.device))
        assert batch.actions.device.type == agent.device.type
        torch.manual_seed(0)
        losses.append(on_cpu(agent.train_step(batch)))
        torch.manual_seed(1)
        with torch.no_grad():
            sample = agent.model.sample(batch.cond, deterministic=False, return_chain=True)
        samples.append((on_cpu(sample.actions), on_cpu(sample.chain)))
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-4, atol=1e-6)
    moments = tuple(first_moments(a.optimizer, list(a.model.parameters())) for a in agents)
    assert_adam_step_close(tuple(list(a.model.parameters()) for a in agents), moments)
    assert_adam_step_close(tuple(list(a.ema.model.parameters()) for a in agents), moments)  # copied at batch 0
    for got, want in zip(*samples):
        assert got.shape == want.shape and torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)  # 20 denoising steps of rounding


# ----------------------------------------------------------------------------------------------------------------
# one PPO update: DPPO and the flow policy


PPO_CONFIGS = {"ft_ppo_diffusion_mlp": 10, "ft_ppo_reflow_mlp": 4}
"""Hopper PPO configs and their fine-tuned chain steps K': DPPO (K = 20, K' = 10) and the flow policy (K = K' = 4)."""


def hopper_ppo(device: torch.device, name: str = "ft_ppo_diffusion_mlp") -> PPO:
    """The hopper PPO config `name`'s policy (residual MLP 512x3) and critic on `device`, one epoch of one
    minibatch (a single AdamW step), no KL stop."""
    overrides = [
        "wandb=null",
        f"train.n_steps={STEPS}",
        f"env.n_envs={ENVS}",
        f"train.batch_size={STEPS * ENVS * PPO_CONFIGS[name]}",
        "train.update_epochs=1",
        "train.target_kl=null",
    ]
    cfg = compose(HOPPER_FT, name, overrides)
    torch.manual_seed(0)
    policy = build_policy(cfg, PPO.model_keys).to(device)
    return PPO.from_config(Experiment.from_config(cfg, PPO), policy, device)


def rollout(ppo: PPO, device: torch.device, seed: int = 3) -> RolloutBuffer:
    """A synthetic rollout on `device`: random states, sampled chains, random rewards and episode ends, critic
    values, GAE."""
    policy, k = ppo.policy, ppo.n_chain_steps
    g = torch.Generator().manual_seed(seed)
    buf = RolloutBuffer(STEPS, ENVS, {"state": ((1, 11), torch.float32)}, (k + 1, 4, 3), device)
    buf.obs["state"].copy_(torch.rand(STEPS, ENVS, 1, 11, generator=g) * 2 - 1)
    buf.rewards.copy_(torch.randn(STEPS, ENVS, generator=g))
    buf.terminated.copy_(torch.rand(STEPS, ENVS, generator=g) < 0.1)
    buf.truncated.copy_(torch.rand(STEPS, ENVS, generator=g) < 0.1)
    buf.bootstrap_values.copy_(torch.randn(STEPS, ENVS, generator=g))
    torch.manual_seed(seed)
    with torch.no_grad():
        buf.chains.copy_(policy.sample(buf.flat_obs(), return_chain=True).chain.view(STEPS, ENVS, k + 1, 4, 3))
        buf.values.copy_(ppo.values(buf.flat_obs()).view(STEPS, ENVS))
        buf.last_values.copy_(ppo.values({"state": buf.obs["state"][-1]}))
    buf.compute_advantages(0.999, 0.95)
    return buf


def buffer_tensors(buf: RolloutBuffer) -> dict[str, Tensor]:
    """Every tensor of the buffer by name (observations as `obs.<key>`)."""
    out = {f"obs.{k}": v for k, v in buf.obs.items()}
    out.update({k: v for k, v in vars(buf).items() if isinstance(v, Tensor)})
    return out


def module_params(*modules: nn.Module) -> list[Tensor]:
    return [p for m in modules for p in m.parameters()]


@pytest.mark.parametrize("name", PPO_CONFIGS)
def test_ppo_update_matches_the_cpu(name: str, host_rng: None) -> None:
    algos = [hopper_ppo(DEVICE, name), hopper_ppo(torch.device("cpu"), name)]
    buffers = [rollout(algo, algo.clip_coefs.device) for algo in algos]
    for key, want in buffer_tensors(buffers[1]).items():  # sampled chains, critic values, GAE
        got = buffer_tensors(buffers[0])[key]
        assert got.device.type == DEVICE.type, f"buffer.{key} is on {got.device}"
        torch.testing.assert_close(on_cpu(got), want, rtol=1e-3, atol=1e-3, msg=lambda m, key=key: f"{key}: {m}")
    for key, value in buffer_tensors(buffers[0]).items():  # the update sees the same rollout on both devices
        value.copy_(buffer_tensors(buffers[1])[key])
    results = []
    for algo, buf in zip(algos, buffers):
        torch.manual_seed(5)
        results.append(algo.update(buf))
    got, want = results
    assert got.keys() == want.keys() and want["n_optimizer_steps"] == 1
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-3, abs=1e-5), key
    torch.testing.assert_close(on_cpu(buffers[0].log_probs), buffers[1].log_probs, rtol=1e-4, atol=2e-4)
    for name in ("actor", "critic"):
        modules = [(a.policy,) if name == "actor" else (a.critic,) for a in algos]
        params = tuple(module_params(*m) for m in modules)
        moments = tuple(first_moments(a.optimizers[name], p) for a, p in zip(algos, params))
        assert_adam_step_close(params, moments)
