"""What the six diffusion baselines (DQL, QSM, DIPO, IDQL, RWR, AWR) check in common in their configs."""

from __future__ import annotations

from omegaconf import DictConfig

from agent.config import cfg_get, require


def check_baseline_config(cfg: DictConfig, *, needs_te_chunks: bool = True) -> None:
    """Checks every diffusion baseline shares beyond its `train` block (whose schema checks the rest): whole-network
    fine-tuning, Ta = Te, a diffusion policy.

    Args:
        cfg: the full config.
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


__all__ = ["check_baseline_config"]
