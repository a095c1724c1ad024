"""Critics: shapes, the exact function they compute (plain vs residual), double-Q switch, input checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.common.critic import CriticObs, CriticObsAct
from model.common.mlp import MLP, ResidualMLP

TO, DO, DA, TA, B = 2, 3, 2, 4, 7
COND_DIM = TO * DO


def make_cond(batch: int = B) -> dict[str, Tensor]:
    return {"state": torch.randn(batch, TO, DO, generator=torch.Generator().manual_seed(0))}


def linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def plain_forward(layers: list[nn.Linear], x: Tensor) -> Tensor:
    """Hand-written Linear - Mish - ... - Linear."""
    for i, lin in enumerate(layers):
        x = lin(x)
        if i < len(layers) - 1:
            x = F.mish(x)
    return x


def residual_forward(layers: list[nn.Linear], x: Tensor) -> Tensor:
    """Hand-written Linear (no activation) - pre-activation residual blocks - Linear."""
    h = layers[0](x)
    for k in range(1, len(layers) - 1, 2):
        h = h + layers[k + 1](F.mish(layers[k](F.mish(h))))
    return layers[-1](h)


def test_critic_obs_shape_and_value() -> None:
    torch.manual_seed(0)
    critic = CriticObs(COND_DIM, [16, 16, 16])
    cond = make_cond()
    v = critic(cond)
    assert v.shape == (B,)
    torch.testing.assert_close(v, plain_forward(linears(critic), cond["state"].flatten(1)).squeeze(-1))


def test_critic_obs_residual_style() -> None:
    torch.manual_seed(0)
    critic = CriticObs(COND_DIM, [16, 16, 16], residual_style=True)
    assert any(isinstance(m, ResidualMLP) for m in critic.modules())
    cond = make_cond()
    torch.testing.assert_close(critic(cond), residual_forward(linears(critic), cond["state"].flatten(1)).squeeze(-1))


def test_critic_obs_act_shapes_and_inputs() -> None:
    torch.manual_seed(0)
    critic = CriticObsAct(COND_DIM, [16, 16], action_dim=DA, action_steps=TA)
    cond = make_cond()
    action = torch.randn(B, TA, DA)
    q1, q2 = critic(cond, action)
    assert q1.shape == (B,) and q2.shape == (B,)
    assert not torch.allclose(q1, q2)  # independently initialised heads
    # Input is concat[flattened state, flattened action chunk], in this order.
    x = torch.cat((cond["state"].flatten(1), action.flatten(1)), dim=-1)
    torch.testing.assert_close(q1, plain_forward(linears(critic.Q1), x).squeeze(-1))
    torch.testing.assert_close(q2, plain_forward(linears(critic.Q2), x).squeeze(-1))
    assert linears(critic.Q1)[0].in_features == COND_DIM + TA * DA


def test_critic_obs_act_residual_style_changes_architecture() -> None:
    """DPPO's ``residual_tyle`` typo fixed (docs/algorithms.md#d6-residual-q-critics): residual_style builds residual
    heads."""
    torch.manual_seed(0)
    plain = CriticObsAct(COND_DIM, [16, 16, 16], action_dim=DA, action_steps=1)
    torch.manual_seed(0)
    res = CriticObsAct(COND_DIM, [16, 16, 16], action_dim=DA, action_steps=1, residual_style=True)
    assert isinstance(plain.Q1, MLP) and isinstance(res.Q1, ResidualMLP) and isinstance(res.Q2, ResidualMLP)
    # Same Linear shapes, so copy the weights across: the outputs still differ, and match the residual formula.
    for src, dst in zip(linears(plain), linears(res)):
        assert src.weight.shape == dst.weight.shape
        dst.load_state_dict(src.state_dict())
    cond, action = make_cond(), torch.randn(B, 1, DA)
    x = torch.cat((cond["state"].flatten(1), action.flatten(1)), dim=-1)
    q_plain, q_res = plain(cond, action)[0], res(cond, action)[0]
    assert (q_plain - q_res).abs().max() > 1e-3
    torch.testing.assert_close(q_res, residual_forward(linears(res.Q1), x).squeeze(-1))


def test_critic_obs_act_single_q() -> None:
    critic = CriticObsAct(COND_DIM, [16, 16], action_dim=DA, double_q=False)
    q1, q2 = critic(make_cond(), torch.randn(B, 1, DA))
    assert q1.shape == (B,) and q2 is None
    assert critic.Q2 is None and not any(k.startswith("Q2") for k in critic.state_dict())


def test_critic_input_checks() -> None:
    critic = CriticObsAct(COND_DIM, [8], action_dim=DA, action_steps=2)
    with pytest.raises(ValueError, match="actions"):
        critic(make_cond(), torch.randn(B, 3, DA))
    with pytest.raises(ValueError, match="cond_dim"):
        CriticObs(COND_DIM + 1, [8])(make_cond())
    with pytest.raises(ValueError, match="even"):
        CriticObs(COND_DIM, [8, 8], residual_style=True)


def test_critic_fits_a_value_function() -> None:
    torch.manual_seed(0)
    critic = CriticObs(COND_DIM, [32, 32, 32], residual_style=True, use_layernorm=True)
    cond = {"state": torch.rand(128, TO, DO) * 2 - 1}
    target = cond["state"].sum(dim=(1, 2)) + cond["state"][:, -1, 0] ** 2
    opt = torch.optim.Adam(critic.parameters(), lr=1e-2)
    for _ in range(150):
        loss = F.mse_loss(critic(cond), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert F.mse_loss(critic(cond), target).item() < 0.02 * target.var().item()
