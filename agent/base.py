"""What every agent does before its own work: seed, device, run folder, logging, config checks."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, cast

import numpy as np
from omegaconf import DictConfig, OmegaConf

from agent.config import resolve_config, validate_common
from agent.errors import DataError
from agent.integrity import verify_checksum
from agent.logger import Logger, setup_logging
from agent.schemas import RunKeys, Wandb, load_block
from agent.utils import resolve_device, set_seed

log = logging.getLogger(__name__)


class BaseAgent(ABC):
    """Shared set-up. Subclasses implement `run()`.

    Args:
        cfg: the composed experiment config (resolved here; `logdir`, the top-level keys as `run_cfg`, `wandb`).
    """

    def __init__(self, cfg: DictConfig) -> None:
        resolve_config(cfg)
        self.run_cfg = validate_common(cfg)  # the typed top-level keys (agent.schemas.RunKeys)
        self.validate(cfg)
        self.cfg = cfg
        self.seed = self.run_cfg.seed
        set_seed(self.seed)
        self.device = resolve_device(self.run_cfg.device)
        self.logdir = fresh_run_dir(Path(cfg.logdir))
        cfg.logdir = str(self.logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        setup_logging(self.logdir)
        OmegaConf.save(cfg, self.logdir / "config.yaml")
        wandb_node = cfg.get("wandb")
        self.logger = Logger(
            self.logdir,
            wandb_cfg=load_block(Wandb, wandb_node, "wandb") if wandb_node else None,
            config=cast(dict, OmegaConf.to_container(cfg)),
        )
        log.info("run folder: %s (device %s, seed %d)", self.logdir, self.device, self.seed)

    def validate(self, cfg: DictConfig) -> None:  # noqa: B027 (optional hook)
        """Agent-specific config checks, run before any work; raise `ConfigError` with one clear line."""

    @abstractmethod
    def run(self) -> dict[str, Any] | None:
        """Do the agent's work (train, fine-tune or evaluate); evaluation returns its result."""


def fresh_run_dir(logdir: Path) -> Path:
    """`logdir`, or `logdir_1`, `logdir_2`, ... when another run already logged there.

    Run folders end in the start time to the second, so two runs started in the same second (a fast sweep, a
    resume right after a crash) would otherwise write into one folder. A resumed run also gets its own folder; it
    reads its checkpoint from the old one.
    """
    candidate, i = logdir, 0
    while (candidate / "metrics.jsonl").exists():
        i += 1
        candidate = logdir.with_name(f"{logdir.name}_{i}")
    return candidate


def check_normalization(stats: dict[str, np.ndarray] | None, run: RunKeys, source: str) -> None:
    """Raise one `DataError` line when normalization statistics do not fit the config's `obs_dim` / `action_dim`.

    Args:
        stats: obs_min, obs_max (Do,) and action_min, action_max (Da,) arrays, or None (nothing to check).
        run: the top-level keys; a missing `obs_dim` or `action_dim` is not checked.
        source: where the statistics come from (a file, "the checkpoint <path>"), named in the error.
    """
    if not stats:
        return
    for prefix, key in (("obs", "obs_dim"), ("action", "action_dim")):
        want = getattr(run, key)
        for name in (f"{prefix}_min", f"{prefix}_max"):
            if name not in stats:
                continue
            got = np.shape(stats[name])
            if want is not None and got[-1:] != (int(want),):
                raise DataError(
                    f"{source}: {name} has shape {got}, but {key}={want}; use the normalization.npz written with "
                    f"this task's dataset, or set {key} to match the data"
                )


def load_normalization(path: str | None, run: RunKeys | None = None) -> dict[str, np.ndarray] | None:
    """Read `normalization.npz` (obs_min, obs_max, action_min, action_max), or None when no path is set; with
    `run`, check its shapes against `obs_dim` and `action_dim` (`check_normalization`)."""
    if not path:
        return None
    p = Path(path)
    if not p.is_file():
        log.warning("normalization file %s not found; checkpoints will not carry normalization statistics", p)
        return None
    verify_checksum(p)  # a downloaded file: unchanged since its download
    try:
        with np.load(p) as f:
            stats = {k: f[k] for k in f.files}
    except Exception as exc:
        raise DataError(f"{p} is not a readable normalization .npz ({exc})") from exc
    missing = {"obs_min", "obs_max", "action_min", "action_max"} - set(stats)
    if missing:
        raise DataError(f"{p} lacks {sorted(missing)}; expected obs_min, obs_max, action_min, action_max")
    if run is not None:
        check_normalization(stats, run, str(p))
    return stats


def run_normalization(run: RunKeys, stored: dict[str, np.ndarray] | None) -> dict[str, np.ndarray] | None:
    """What a run checkpoints as its normalization: the dataset's `normalization_path` when that file exists
    (checked against the dims), else the statistics `stored` in the checkpoint it started from."""
    path = run.normalization_path
    return load_normalization(path, run) if path and Path(path).is_file() else stored
