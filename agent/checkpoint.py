"""Checkpoints: atomic writes, safe loads, and finding the latest one of a run.

A checkpoint is a dict saved with `torch.save` at `<logdir>/checkpoint/state_<N>.pt`, where N is the epoch
(pretraining) or iteration (fine-tuning). It always carries the resolved config (`config`) and, when known, the
normalization statistics (`normalization`), so it can be used without the files it was trained from.

Loading never runs code from the file: checkpoints are read with `torch.load(weights_only=True)`, which builds only
tensors and plain Python values. `save_checkpoint` therefore writes nothing else (`plain_payload`: numpy arrays
become tensors, numpy scalars Python numbers, paths strings, OmegaConf containers dicts and lists), and
`load_checkpoint` turns the normalization statistics back into numpy arrays. Checkpoints written before that (numpy
arrays of numeric dtypes inside) still load: only numpy's array reconstruction is allowed beyond the defaults. A file
that needs anything else is refused with one line; `allow_pickle=true` loads it with full unpickling, for files the
user trusts. A checkpoint whose weights are not all finite is never written (`NonFiniteCheckpointError`).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import pickle
import re
import signal
import tempfile
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from agent.errors import DataError
from agent.integrity import verify_checksum

log = logging.getLogger(__name__)

_STATE_RE = re.compile(r"^state_(\d+)\.pt$")


def checkpoint_path(logdir: str | os.PathLike, index: int) -> Path:
    """`<logdir>/checkpoint/state_<index>.pt`."""
    return Path(logdir) / "checkpoint" / f"state_{index}.pt"


class Terminated(KeyboardInterrupt):
    """SIGTERM, once `stop_on_sigterm` is installed: stops a run the way Ctrl-C does (exit code 143)."""


_SIGTERM_PID: list[int] = []  # the process that installed the handler (forked workers inherit it)


def _raise_terminated(signum: int, frame: Any) -> None:
    if os.getpid() not in _SIGTERM_PID:  # a forked worker: die of SIGTERM as it would without the handler
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    raise Terminated


def stop_on_sigterm() -> None:
    """Make SIGTERM (`kill`, a job scheduler's stop) raise `Terminated` in the main thread, like Ctrl-C."""
    if threading.current_thread() is threading.main_thread():
        _SIGTERM_PID[:] = [os.getpid()]
        signal.signal(signal.SIGTERM, _raise_terminated)


@contextlib.contextmanager
def ctrl_c_deferred() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) or SIGTERM that arrives inside the block and raise it (KeyboardInterrupt or
    `Terminated`) when the block ends.

    A Ctrl-C in the middle of `torch.save` comes out as a RuntimeError from its zip writer (not a
    KeyboardInterrupt), so the run would end with a traceback instead of its "interrupted; continue from" line;
    deferred, the checkpoint being written is completed first. Only for the signals whose handler raises (main
    thread; SIGINT not ignored or taken over; SIGTERM after `stop_on_sigterm`).
    """
    ours = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: _raise_terminated}
    active = {sig: h for sig, h in ours.items() if signal.getsignal(sig) is h}
    if threading.current_thread() is not threading.main_thread() or not active:
        yield
        return
    pending: list[int] = []
    for sig in active:
        signal.signal(sig, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        for sig, handler in active.items():
            signal.signal(sig, handler)
    if signal.SIGTERM in pending:
        raise Terminated
    if pending:
        raise KeyboardInterrupt


# Top-level entries of a checkpoint that hold weights: the policy's, its EMA copy's, the algorithm's modules'.
WEIGHT_ENTRIES = ("model", "ema", "algorithm")
# What `weights_only` loading allows beyond its defaults, for checkpoints written with numpy arrays inside: numpy's
# array reconstruction and numeric dtypes (an array's items are still read by the restricted unpickler).
_NUMPY_DTYPES = [type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"]


def _numpy_reconstruct() -> Any:
    """numpy's array-unpickling function (numpy 2 moved it to `numpy._core`, keeping `numpy.core` as a deprecated
    alias)."""
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        with contextlib.suppress(ImportError, AttributeError):
            return importlib.import_module(module)._reconstruct
    raise ImportError("numpy's multiarray._reconstruct not found")


# pickles name it under the module of the numpy that wrote them
_MULTIARRAY_NAMES = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMPY_GLOBALS: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [
    *((_numpy_reconstruct(), f"{module}._reconstruct") for module in _MULTIARRAY_NAMES),
    np.ndarray,
    np.dtype,
    *_NUMPY_DTYPES,
]


class NonFiniteCheckpointError(DataError):
    """A checkpoint's weights hold NaN or inf; it is not written (or, when found on disk, not used)."""


def plain_payload(obj: Any) -> Any:
    """`obj` with everything `torch.load(weights_only=True)` cannot build turned into what it can.

    numpy arrays become tensors (same dtype and shape), numpy scalars Python numbers, paths strings, OmegaConf
    containers plain dicts and lists. Dicts (state dicts are `OrderedDict`s with `_metadata`), lists and tuples
    that need no change are returned as they are.
    """
    if isinstance(obj, np.generic):  # before the Python types: np.float64 is a float subclass
        return obj.item()
    if isinstance(obj, torch.Tensor) or obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj).copy())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (DictConfig, ListConfig)):
        return OmegaConf.to_container(obj, resolve=True)
    if isinstance(obj, dict):
        items = {k: plain_payload(v) for k, v in obj.items()}
        if all(items[k] is obj[k] for k in obj):
            return obj
        out = type(obj)(items) if type(obj) in (dict, OrderedDict) else dict(items)
        if hasattr(obj, "_metadata"):
            out._metadata = obj._metadata  # type: ignore[attr-defined]
        return out
    if isinstance(obj, (list, tuple)):
        elems = [plain_payload(v) for v in obj]
        if all(a is b for a, b in zip(elems, obj)):
            return obj
        return type(obj)(elems) if type(obj) in (list, tuple) else list(elems)
    return obj


def non_finite_weights(payload: dict[str, Any]) -> list[str]:
    """Names (`model.<key>`, `ema.<key>`, `algorithm.modules.<name>.<key>`) of floating-point weights of a
    checkpoint dict that hold NaN or inf; empty when all are finite. Optimiser state is not inspected."""
    found: list[str] = []

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                found.append(prefix)
        elif isinstance(value, dict):
            for key, item in value.items():
                if prefix == "algorithm" and key != "modules":
                    continue  # optimiser and scheduler state: not weights
                visit(f"{prefix}.{key}", item)

    for entry in WEIGHT_ENTRIES:
        if entry in payload:
            visit(entry, payload[entry])
    return found


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write `payload` to `path` atomically: a temp file in the same folder, fsync, then rename.

    The payload is written as `plain_payload(payload)`, so that it loads with `weights_only=True`. A run killed
    mid-write leaves the previous checkpoint intact and no partial file under the final name; a Ctrl-C during the
    write lets it finish, then raises KeyboardInterrupt.

    Raises:
        NonFiniteCheckpointError: a weight holds NaN or inf (nothing is written).
    """
    path = Path(path)
    bad = non_finite_weights(payload)
    if bad:
        raise NonFiniteCheckpointError(
            f"not writing {path}: {len(bad)} weight tensor(s) hold NaN or inf (first: {bad[0]})"
        )
    payload = plain_payload(payload)
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


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", allow_pickle: bool = False
) -> dict[str, Any]:
    """Load a checkpoint dict without running code from it (see the module docstring).

    Args:
        path: a `.pt` file, or a run folder (its latest checkpoint).
        map_location: where the tensors go.
        allow_pickle: read the file with full unpickling, which can run code it holds (`allow_pickle=true` in the
            config; only for files the user trusts).

    Returns:
        the checkpoint dict; `normalization` (when present) as numpy arrays.

    Raises:
        DataError: missing, unreadable, foreign, changed since its download (agent/integrity.py), or (without
            `allow_pickle`) needing arbitrary unpickling.
    """
    path = Path(path)
    if path.is_dir():
        latest = latest_checkpoint(path)
        if latest is None:
            raise DataError(f"no checkpoint/state_<N>.pt under {path}; pass the path of a .pt file")
        path = latest
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path} (pass the path of a checkpoint/state_<N>.pt file)")
    verify_checksum(path)  # a downloaded checkpoint: unchanged since its download
    try:
        if allow_pickle:
            payload = torch.load(path, map_location=map_location, weights_only=False)
        else:
            with torch.serialization.safe_globals(_NUMPY_GLOBALS):
                payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise DataError(
            f"checkpoint {path} needs arbitrary unpickling to load ({_unsafe_detail(exc)}), which can run code "
            "it holds; if you trust the file, add allow_pickle=true to the command line"
        ) from exc
    except Exception as exc:  # torch raises several types for truncated / foreign files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DataError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {first}); is it truncated?") from exc
    if not isinstance(payload, dict) or "model" not in payload:
        raise DataError(f"{path} is not a checkpoint of this toolkit (expected a dict with a 'model' entry)")
    norm = payload.get("normalization")
    if isinstance(norm, dict):
        payload["normalization"] = {
            k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in norm.items()
        }
    return payload


def _unsafe_detail(exc: pickle.UnpicklingError) -> str:
    """The line of torch's weights-only error that names what the file wanted to build."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "Unsupported" in line or "got <" in line]
    return (named or lines or [type(exc).__name__])[0].rstrip(".")


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


def is_complete_file(path: Path) -> bool:
    """Whether a checkpoint file is whole: `torch.save` writes a zip archive, whose directory is at its end, so a
    truncated file (a full disk, an interrupted copy) fails to open as one."""
    try:
        with zipfile.ZipFile(path) as archive:
            return bool(archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def newest_readable_checkpoint(run_dir: Path) -> Path:
    """The newest `state_<N>.pt` of a run folder that is a complete file; a damaged newer one is skipped with a
    warning naming both.

    Raises:
        DataError: no checkpoint of the run is complete.
    """
    found = list_checkpoints(run_dir)
    damaged: list[Path] = []
    for _, path in reversed(found):
        if is_complete_file(path):
            if damaged:
                log.warning(
                    "%s is truncated or damaged; resuming from the previous complete checkpoint %s",
                    ", ".join(str(p) for p in damaged),
                    path,
                )
            return path
        damaged.append(path)
    raise DataError(f"every checkpoint under {run_dir} is truncated or damaged; start a new run (resume=false)")


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
        return newest_readable_checkpoint(newest)
    path = Path(str(resume))
    if path.is_file():
        return path
    if path.is_dir() and latest_checkpoint(path) is not None:
        return newest_readable_checkpoint(path)
    raise DataError(f"resume={resume}: no checkpoint there (give a run folder or a checkpoint/state_<N>.pt file)")
