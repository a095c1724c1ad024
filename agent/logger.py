"""One logger for every agent: console (through `logging`, tqdm-safe), a JSON-lines file in the run folder, wandb.

Metrics are namespaced (`pretrain/loss`, `train/pg_loss`, `eval/success_rate`). Each call to `log` writes one line
`{"step": ..., "<key>": value, ...}` to `<logdir>/metrics.jsonl`, which `script/plot` reads.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, cast

from tqdm import tqdm

from agent.errors import UserError
from agent.schemas import Wandb

log = logging.getLogger(__name__)

WandbMode = Literal["online", "offline", "disabled", "shared"]


class TqdmHandler(logging.Handler):
    """Logging handler that writes through `tqdm.write`, so messages do not break a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record))
        except Exception:  # never let logging crash a run
            self.handleError(record)


def setup_logging(logdir: str | os.PathLike | None = None, level: int = logging.INFO) -> None:
    """Configure the root logger: console through tqdm, plus `<logdir>/run.log` when a folder is given."""
    root = logging.getLogger()
    root.setLevel(level)
    for h in list(root.handlers):  # also Hydra's own handlers, which would print every line twice
        root.removeHandler(h)
    console = TqdmHandler()
    console.setFormatter(logging.Formatter("[%(asctime)s %(levelname)s] %(message)s", "%H:%M:%S"))
    console._dppo = True  # type: ignore[attr-defined]
    root.addHandler(console)
    if logdir is not None:
        Path(logdir).mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(Path(logdir) / "run.log")
        fh.setFormatter(logging.Formatter("[%(asctime)s %(name)s %(levelname)s] %(message)s"))
        fh._dppo = True  # type: ignore[attr-defined]
        root.addHandler(fh)


def _plain(value: Any) -> Any:
    """Make a metric JSON-friendly: tensors and numpy scalars become floats, NaN/inf become None."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Logger:
    """Writes metrics to the console, `<logdir>/metrics.jsonl` and (when configured) wandb.

    Args:
        logdir: run folder.
        wandb_cfg: the config's typed `wandb` block (agent.schemas.Wandb), or None to disable.
        config: the resolved config, stored with the wandb run.
    """

    def __init__(self, logdir: str | os.PathLike, wandb_cfg: Wandb | None = None, config: dict | None = None):
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.path = self.logdir / "metrics.jsonl"
        # line-buffered and kept open for the run: a killed run keeps every logged line
        self._file = open(self.path, "a", buffering=1)  # noqa: SIM115
        self._wandb = None
        if wandb_cfg is not None:
            import wandb  # lazy: wandb is slow to import

            mode = wandb_cfg.mode or os.environ.get("WANDB_MODE") or "online"
            try:
                self._wandb = wandb.init(
                    entity=wandb_cfg.entity or None,
                    project=wandb_cfg.project or "dppo",
                    name=wandb_cfg.run or None,
                    mode=cast(WandbMode, mode),  # a user string: wandb.init rejects other values
                    dir=str(self.logdir),
                    config=config,
                    resume="allow",
                )
            except Exception as exc:  # no login, no network, a bad entity: say how to go on
                self._file.close()
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise UserError(
                    f"wandb could not start in mode {mode!r} ({first}); run `wandb login`, or set "
                    "WANDB_MODE=offline, or pass wandb=null"
                ) from exc

    def log(self, metrics: Mapping[str, Any], step: int, console: bool = True) -> None:
        """Record `metrics` at `step` (an epoch, iteration or env-step count chosen by the agent)."""
        row = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(row) + "\n")
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if v is not None and k != "step"}, step=int(step))
        if console:
            shown = " ".join(f"{k}={_fmt(v)}" for k, v in row.items() if k != "step")
            log.info("step %d | %s", step, shown)

    def close(self) -> None:
        self._file.close()
        if self._wandb is not None:
            self._wandb.finish()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a `metrics.jsonl` file (a folder is taken to contain one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
