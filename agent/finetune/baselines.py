"""What the six diffusion baselines (DQL, QSM, DIPO, IDQL, RWR, AWR) check in common in their configs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.config import require

if TYPE_CHECKING:
    from agent.finetune.base import Experiment


def check_baseline_config(exp: Experiment, *, needs_te_chunks: bool = True) -> None:
    """Checks every diffusion baseline shares beyond its `train` block (whose schema checks the rest): whole-network
    fine-tuning, Ta = Te, a diffusion policy.

    Args:
        exp: the experiment's blocks.
        needs_te_chunks: the algorithm stores or scores Te-step chunks with networks that expect Ta steps.
    """
    k_ft = exp.model_node("ft_denoising_steps") or exp.run.ft_denoising_steps  # the policy schema's default is 0
    require(
        not k_ft,
        f"ft_denoising_steps={k_ft}: the diffusion baselines fine-tune the whole network (no frozen copy); "
        "set ft_denoising_steps=0",
    )
    horizon, act = exp.run.horizon_steps, exp.run.act_steps
    require(
        not needs_te_chunks or horizon == act,
        f"horizon_steps={horizon} but act_steps={act}: this baseline stores and scores executed (act_steps) chunks "
        f"with networks that take horizon_steps; set horizon_steps=act_steps={act} (and pretrain with it)",
    )
    target = exp.model_node("_target_")
    require(
        str(target or "").endswith("DiffusionModel"),
        f"model._target_={target}: the diffusion baselines need a DiffusionModel policy",
    )


__all__ = ["check_baseline_config"]
