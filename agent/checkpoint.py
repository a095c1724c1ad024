"""Checkpoints: atomic writes, safe loads, and finding the latest one of a run.

A checkpoint is a dict saved with `torch.save` at `<logdir>/checkpoint/state_<N>.pt`, where N is the epoch
(pretraining) or iteration (fine-tuning). It always carries the resolved config (`config`) and, when known, the
normalization statistics (`normalization`), so it can be used without the files it was trained from.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from agent.errors import DataError

_STATE_RE = re.compile(r"^state_(\d+)\.pt$")


def checkpoint_path(logdir: str | os.PathLike, index: int) -> Path:
    """`<logdir>/checkpoint/state_<index>.pt`."""
    return Path(logdir) / "checkpoint" / f"state_{index}.pt"


@contextlib.contextmanager
def ctrl_c_deferred() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) that arrives inside the block and raise KeyboardInterrupt when the block ends.

    A Ctrl-C in the middle of `torch.save` comes out as a RuntimeError from its zip writer (not a
    KeyboardInterrupt), so the run would end with a traceback instead of its "interrupted; continue from" line;
    deferred, the checkpoint being written is completed first. Only where Python's own handler is installed
    (main thread, SIGINT not ignored or taken over).
    """
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    pending: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if pending:
        raise KeyboardInterrupt


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write `payload` to `path` atomically: a temp file in the same folder, fsync, then rename.

    A run killed mid-write leaves the previous checkpoint intact and no partial file under the final name; a Ctrl-C
    during the write lets it finish, then raises KeyboardInterrupt.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with ctrl_c_deferred():
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(payload, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict, turning a missing or unreadable file into a one-line `DataError`."""
    path = Path(path)
    if path.is_dir():
        latest = latest_checkpoint(path)
        if latest is None:
            raise DataError(f"no checkpoint/state_<N>.pt under {path}; pass the path of a .pt file")
        path = latest
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path} (pass the path of a checkpoint/state_<N>.pt file)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises several types for truncated / foreign files
        raise DataError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); is it truncated?") from exc
    if not isinstance(payload, dict) or "model" not in payload:
        raise DataError(f"{path} is not a checkpoint of this toolkit (expected a dict with a 'model' entry)")
    return payload


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(index, path) of every `state_<N>.pt` under `<run_dir>/checkpoint` (or `run_dir` itself), sorted by N."""
    run_dir = Path(run_dir)
    folder = run_dir / "checkpoint" if (run_dir / "checkpoint").is_dir() else run_dir
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _STATE_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The `state_<N>.pt` with the largest N under a run folder, or None."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def find_resume_checkpoint(resume: Any, logdir: str | os.PathLike) -> Path | None:
    """Resolve the `resume` config value into a checkpoint path.

    Args:
        resume: False/None (start fresh), True (the latest checkpoint among this run's sibling folders, i.e. earlier
            runs of the same experiment name), or a path to a run folder or a `.pt` file.
        logdir: this run's folder; its parent holds earlier runs of the same experiment.

    Raises:
        DataError: resume was requested but nothing to resume from exists.
    """
    if resume is None or resume is False or str(resume).lower() in ("false", "none", "null", ""):
        return None
    if resume is True or str(resume).lower() == "true":
        parent = Path(logdir).parent
        runs = [d for d in parent.iterdir() if d.is_dir() and latest_checkpoint(d)] if parent.is_dir() else []
        if not runs:
            raise DataError(f"resume=true but no earlier run with checkpoints exists under {parent}")
        newest = max(runs, key=lambda d: latest_checkpoint(d).stat().st_mtime)  # type: ignore[union-attr]
        return latest_checkpoint(newest)
    path = Path(str(resume))
    if path.is_file():
        return path
    if path.is_dir():
        latest = latest_checkpoint(path)
        if latest is not None:
            return latest
    raise DataError(f"resume={resume}: no checkpoint there (give a run folder or a checkpoint/state_<N>.pt file)")
