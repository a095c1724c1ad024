"""Convert a D4RL-style dataset dictionary to the toolkit's `train.npz` + `normalization.npz`.

Input: a `.npz`, `.pkl` or `.hdf5` file holding `observations` (N, Do), `actions` (N, Da), `rewards` (N,),
`terminals` (N,) and `timeouts` (N,) - what `d4rl`'s `env.get_dataset()` returns, or D4RL's own hdf5 files.

    python script/dataset/convert_d4rl.py --input hopper_medium-v2.hdf5 --task hopper-medium-v2
    python script/dataset/convert_d4rl.py --input kitchen.pkl --task kitchen-complete-v0 --val-split 0.1

Rules (DPPO's, docs/algorithms.md#converters): trajectory ends are the sorted union of terminal and timeout indices and
the tail after the last end is dropped; normalisation statistics are the min/max over the *whole* dataset (before any
filtering); `--max-episodes` keeps the first episodes; trajectories with total reward <= 0 are skipped (turn off with
`--keep-nonpositive-reward`). Deliberate difference: the train/val split is drawn after the reward filter
(docs/algorithms.md#d23-dataset-split), so `--val-split` is the validation fraction of the trajectories actually
written.

A `.pkl` file is read by an unpickler that builds only dicts and numpy arrays, so reading it cannot run code; a file
that needs anything else is refused with one line, and `--allow-pickle` reads it with full unpickling (only for
files you trust).
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # allow `python script/dataset/convert_d4rl.py` from a checkout
    sys.path.insert(0, str(REPO))

from script.dataset.common import (  # noqa: E402
    DatasetSummary,
    NormStats,
    select_trajectories,
    setup_logging,
    task_dir,
    write_dataset,
)

log = logging.getLogger("convert_d4rl")

# The globals a pickled dict of numpy arrays needs: array and dtype reconstruction (numpy 1 and 2 module names).
_CORE_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
_ARRAY_GLOBALS = frozenset(
    {(core, name) for core in _CORE_MODULES for name in ("_reconstruct", "scalar")}
    | {("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict")}
)


class ArraysUnpickler(pickle.Unpickler):
    """An unpickler that builds containers, numbers, strings and numpy arrays, and refuses every other global
    (a function call such as `os.system` included) with `RefusedGlobal` naming it."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _ARRAY_GLOBALS or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise RefusedGlobal(f"{module}.{name}")


class RefusedGlobal(pickle.UnpicklingError):
    """`ArraysUnpickler` met a global it does not build (the message names it)."""


class NeedsPickleError(ValueError):
    """A pickle that refers to more than numpy arrays: loading it needs `--allow-pickle`."""


def read_pickle(path: Path, allow_pickle: bool = False) -> object:
    """Unpickle `path` with `ArraysUnpickler`, or with full unpickling when `allow_pickle`.

    Raises:
        ValueError: the file needs a global beyond numpy arrays (one line naming it and `--allow-pickle`).
    """
    with open(path, "rb") as f:
        if allow_pickle:
            return pickle.load(f)  # noqa: S301 - the user vouched for this file with --allow-pickle
        try:
            return ArraysUnpickler(f).load()
        except RefusedGlobal as exc:
            raise NeedsPickleError(
                f"{path} needs arbitrary unpickling to load (it refers to {exc}), which can run code it holds; if "
                "you trust the file, pass --allow-pickle"
            ) from exc


REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals")


def load_d4rl_dict(path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, np.ndarray]:
    """Read a D4RL dictionary from `.npz`, `.pkl`/`.pickle` or `.hdf5`/`.h5` (top-level datasets).

    `states` is accepted as another name for `observations`; a missing `timeouts` becomes all False. A `.pkl` is
    read by `read_pickle` (numpy arrays only, unless `allow_pickle`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"D4RL file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".pkl", ".pickle", ".hdf5", ".h5"):
        raise ValueError(f"unsupported file type {suffix!r} for {path} (use .npz, .pkl or .hdf5)")
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                data = {k: f[k] for k in f.files}
        elif suffix in (".pkl", ".pickle"):
            data = read_pickle(path, allow_pickle)
        else:
            import h5py

            with h5py.File(path, "r") as f:
                data = {k: f[k][()] for k in f if isinstance(f[k], h5py.Dataset)}
    except NeedsPickleError:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy, pickle and h5py each fail their own way on a damaged file
        raise ValueError(
            f"{path} is not a readable {suffix[1:]} file ({type(exc).__name__}: {exc}); it is truncated, damaged or "
            "of another format: download or export it again"
        ) from exc
    if not isinstance(data, Mapping):
        raise ValueError(f"{path} does not hold a dictionary (got {type(data).__name__})")
    data = {str(k): np.asarray(v) for k, v in data.items()}
    if "observations" not in data and "states" in data:
        data["observations"] = data.pop("states")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ValueError(f"{path} lacks {missing}; it has {sorted(data)}")
    if "timeouts" not in data:
        data["timeouts"] = np.zeros(len(data["observations"]), dtype=bool)
    check_d4rl_arrays(data, str(path))
    return data


def check_d4rl_arrays(data: Mapping[str, np.ndarray], source: str) -> None:
    """Raise one ValueError line naming `source` and the key when the D4RL arrays do not fit together:
    `observations` (N, Do) and `actions` (N, Da) finite numbers, `rewards`, `terminals`, `timeouts` (N,)."""
    n = len(data["observations"])
    for key in ("observations", "actions", "rewards", "terminals", "timeouts"):
        if key not in data and key == "timeouts":  # optional: all False
            continue
        values = np.asarray(data[key])
        if not (np.issubdtype(values.dtype, np.number) or values.dtype == bool):
            raise ValueError(f"{source}: {key} holds {values.dtype} values, not numbers")
        want_dims = 2 if key in ("observations", "actions") else 1
        if want_dims == 1 and values.ndim == 2 and values.shape[1:] == (1,):  # (N, 1) flags or rewards
            values = values[:, 0]
        if values.ndim != want_dims or len(values) != n:
            shape = "(N, D)" if want_dims == 2 else "(N,)"
            raise ValueError(f"{source}: {key} has shape {values.shape}; expected {shape} with N={n} (observations)")
    if n == 0:
        raise ValueError(f"{source}: the arrays are empty")


def episode_lengths(terminals: np.ndarray, timeouts: np.ndarray) -> np.ndarray:
    """Episode lengths (n_traj,) from per-step end flags (N,).

    An episode ends at every index where `terminals` or `timeouts` is set (their sorted union); the steps
    after the last end belong to an unfinished episode and are not counted (the caller drops them).
    """
    ends = np.flatnonzero(np.logical_or(np.asarray(terminals, bool), np.asarray(timeouts, bool)))
    return np.diff(np.concatenate([[-1], ends])).astype(np.int64)


def convert_d4rl(
    data: Mapping[str, np.ndarray],
    out_dir: str | os.PathLike,
    max_episodes: int | None = None,
    val_split: float = 0.0,
    skip_nonpositive_reward: bool = True,
    seed: int = 0,
) -> DatasetSummary:
    """Split a D4RL dictionary into episodes, filter and normalise them, and write the dataset files.

    Args:
        data: `observations` (N, Do), `actions` (N, Da), `rewards` (N,), `terminals` (N,), `timeouts` (N,).
        out_dir: folder for train.npz (+ val.npz) and normalization.npz.
        max_episodes: keep only the first this many episodes (before the reward filter, as the reference).
        val_split: fraction of the written trajectories that go to val.npz.
        skip_nonpositive_reward: drop episodes whose total reward is <= 0 (the reference's behaviour).
        seed: seed of the train/val split.
    """
    obs = np.asarray(data["observations"])
    actions = np.asarray(data["actions"])
    rewards = np.asarray(data["rewards"]).reshape(-1)
    terminals = np.asarray(data["terminals"]).reshape(-1).astype(bool)
    timeouts = np.asarray(data.get("timeouts", np.zeros(len(obs), bool))).reshape(-1).astype(bool)
    check_d4rl_arrays(data, "the D4RL dictionary")
    stats = NormStats.from_data(obs, actions)  # whole dataset, before any filtering (as DPPO)
    lengths = episode_lengths(terminals, timeouts)
    n_used = int(lengths.sum())
    if n_used < len(obs):
        log.info("dropping %d trailing steps after the last episode end", len(obs) - n_used)
    if max_episodes is not None:
        lengths = lengths[:max_episodes]
        n_used = int(lengths.sum())
    per_step = {
        "states": obs[:n_used],
        "actions": actions[:n_used],
        "rewards": rewards[:n_used],
        "terminals": terminals[:n_used],
    }
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    returns = np.add.reduceat(rewards[:n_used], starts) if len(lengths) else np.zeros(0)
    keep = np.flatnonzero(returns > 0) if skip_nonpositive_reward else np.arange(len(lengths))
    if skip_nonpositive_reward and len(keep) < len(lengths):
        log.info("skipping %d of %d episodes with total reward <= 0", len(lengths) - len(keep), len(lengths))
    if len(keep) == 0:
        raise ValueError("no episode left to write (all filtered out, or no terminal/timeout flags set)")
    arrays, kept_lengths = select_trajectories(per_step, lengths, keep)
    return write_dataset(
        out_dir,
        arrays["states"],
        arrays["actions"],
        kept_lengths,
        rewards=arrays["rewards"],
        terminals=arrays["terminals"],
        stats=stats,
        val_split=val_split,
        seed=seed,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--input", required=True, help="D4RL dictionary file (.npz, .pkl or .hdf5)")
    p.add_argument("--task", help="task name; output goes to $DPPO_DATA_DIR/<suite>/<task>/ (default: file stem)")
    p.add_argument("--suite", default="gym", help="suite folder under the data dir (default: gym)")
    p.add_argument("--out-dir", help="explicit output folder (overrides --suite/--task)")
    p.add_argument("--max-episodes", type=int, default=None, help="keep only the first N episodes")
    p.add_argument("--val-split", type=float, default=0.0, help="fraction of episodes for val.npz (default 0)")
    p.add_argument(
        "--keep-nonpositive-reward",
        action="store_true",
        help="keep episodes with total reward <= 0 (the reference skips them)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read a .pkl with full unpickling, which can run code it holds (only files you trust)",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    out = Path(args.out_dir) if args.out_dir else task_dir(args.suite, args.task or Path(args.input).stem)
    try:
        data = load_d4rl_dict(args.input, allow_pickle=args.allow_pickle)
        summary = convert_d4rl(
            data,
            out,
            max_episodes=args.max_episodes,
            val_split=args.val_split,
            skip_nonpositive_reward=not args.keep_nonpositive_reward,
            seed=args.seed,
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary.line())  # final summary for the user
    return 0


if __name__ == "__main__":
    sys.exit(main())
