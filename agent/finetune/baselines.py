"""What the six diffusion baselines (DQL, QSM, DIPO, IDQL, RWR, AWR) check in common in their configs."""

from __future__ import annotations

from collections.abc import Iterable

from omegaconf import DictConfig

from agent.config import cfg_get, require


def check_baseline_config(cfg: DictConfig, schedulers: Iterable[str], *, needs_te_chunks: bool = True) -> None:
    """Checks every diffusion baseline shares: whole-network fine-tuning, Ta = Te, warm-up, lr schedules.

    Args:
        cfg: the full config.
        schedulers: names of the `train.<name>_lr_scheduler` / `train.lr_scheduler` blocks to check.
        needs_te_chunks: the algorithm stores or scores Te-step chunks with networks that expect Ta steps.
    """
    k_ft = cfg_get(cfg, "model.ft_denoising_steps", cfg_get(cfg, "ft_denoising_steps", 0))
    require(
        not k_ft,
        f"ft_denoising_steps={k_ft}: the diffusion baselines fine-tune the whole network (no frozen copy); "
        "set ft_denoising_steps=0",
    )
    horizon, act = cfg_get(cfg, "horizon_steps"), cfg_get(cfg, "act_steps")
    require(
        not needs_te_chunks or horizon == act,
        f"horizon_steps={horizon} but act_steps={act}: this baseline stores and scores executed (act_steps) chunks "
        f"with networks that take horizon_steps; set horizon_steps=act_steps={act} (and pretrain with it)",
    )
    require(
        cfg_get(cfg, "model._target_", "").endswith("DiffusionModel"),
        f"model._target_={cfg_get(cfg, 'model._target_')}: the diffusion baselines need a DiffusionModel policy",
    )
    gamma = cfg_get(cfg, "train.gamma", 0.99)
    require(0.0 < gamma <= 1.0, f"train.gamma must be in (0, 1], got {gamma}")
    warm = cfg_get(cfg, "train.n_critic_warmup_itr", 0)
    require(isinstance(warm, int) and warm >= 0, f"train.n_critic_warmup_itr must be an integer >= 0, got {warm!r}")
    for name in schedulers:
        key = f"train.{name}_lr_scheduler" if name else "train.lr_scheduler"
        sched = cfg_get(cfg, key)
        if sched is None:
            continue
        cycle, warmup = sched.get("first_cycle_steps", 1), sched.get("warmup_steps", 0)
        require(
            isinstance(cycle, int) and cycle >= 1 and isinstance(warmup, int) and 0 <= warmup < cycle,
            f"{key}: warmup_steps={warmup} must be in [0, first_cycle_steps={cycle})",
        )


__all__ = ["check_baseline_config"]
