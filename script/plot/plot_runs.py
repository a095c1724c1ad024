"""Plot learning curves from run folders and tabulate final values.

    # one or more runs (the quick start uses this)
    python script/plot/plot_runs.py log/gym-finetune/hopper... --metric eval/episode_return --out curve.png
    # a sweep: every run folder under ROOT, grouped by task and algorithm, mean and spread over seeds
    python script/plot/plot_runs.py --sweep log/multirun/2026-... --metric eval/success_rate --out sweep.png

A run folder holds `config.yaml` and `metrics.jsonl` (written by agent.logger.Logger). In sweep mode the
algorithm is the config's `name` without its seed, and the task is `env_name`; the x axis is `--x` (default
`train/env_steps`, falling back to the logged step). Writes a PNG and a markdown table of final values.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from agent.logger import read_metrics  # noqa: E402


def find_runs(root: Path) -> list[Path]:
    """Every folder under `root` (or `root` itself) that holds a metrics.jsonl."""
    if (root / "metrics.jsonl").is_file():
        return [root]
    return sorted(p.parent for p in root.rglob("metrics.jsonl"))


def curve(run: Path, metric: str, x_key: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of `metric` in one run; x is the latest `x_key` logged up to that row (evaluation rows do not carry
    `train/env_steps`: they take the count of the training row before them), else the row's step."""
    xs, ys = [], []
    last_x = None
    for row in read_metrics(run):
        if row.get(x_key) is not None:
            last_x = row[x_key]
        if row.get(metric) is None:
            continue
        xs.append(last_x if last_x is not None else row["step"])
        ys.append(row[metric])
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def run_labels(run: Path) -> tuple[str, str, int]:
    """(task, algorithm, seed) read from the run's config.yaml."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(run / "config.yaml")
    task = str(cfg.get("env_name", cfg.get("env", "task")))
    seed = int(cfg.get("seed", 0))
    name = str(cfg.get("name", run.parent.name))
    algo = name.removeprefix(f"{task}_")
    return task, algo, seed


def plot_sweep(runs: list[Path], metric: str, x_key: str, out: Path) -> str:
    """Draw one panel per task (mean +- std over seeds per algorithm) into `out`; return a markdown table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, dict[str, list[tuple[np.ndarray, np.ndarray]]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        x, y = curve(run, metric, x_key)
        if len(y):
            task, algo, _ = run_labels(run)
            groups[task][algo].append((x, y))
    if not groups:
        raise SystemExit(f"no run under the given folders logged {metric}")
    tasks = sorted(groups)
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False)
    lines = [f"| task | algorithm | seeds | final {metric} (mean ± std) |", "|---|---|---|---|"]
    for ax, task in zip(axes[0], tasks):
        for algo, series in sorted(groups[task].items()):
            n = min(len(y) for _, y in series)
            x = series[0][0][:n]
            ys = np.stack([y[:n] for _, y in series])
            mean, std = ys.mean(0), ys.std(0)
            ax.plot(x, mean, label=f"{algo} (n={len(series)})")
            ax.fill_between(x, mean - std, mean + std, alpha=0.2)
            finals = ys[:, -1]
            lines.append(f"| {task} | {algo} | {len(series)} | {finals.mean():.3f} ± {finals.std():.3f} |")
        ax.set_title(task)
        ax.set_xlabel(x_key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path, help="run folders (or folders containing runs)")
    parser.add_argument("--sweep", type=Path, help="a sweep root: every run below it")
    parser.add_argument("--metric", default="eval/episode_return")
    parser.add_argument("--x", default="train/env_steps", help="x-axis metric (falls back to the logged step)")
    parser.add_argument("--out", type=Path, default=None, help="PNG path (default: <first run or sweep>/curves.png)")
    args = parser.parse_args(argv)
    roots = ([args.sweep] if args.sweep else []) + list(args.runs)
    if not roots:
        parser.error("give run folders or --sweep ROOT")
    runs = [r for root in roots for r in find_runs(root)]
    if not runs:
        raise SystemExit(f"no metrics.jsonl under {', '.join(map(str, roots))}")
    out = args.out or roots[0] / "curves.png"
    table = plot_sweep(runs, args.metric, args.x, out)
    table_path = out.with_suffix(".md")
    table_path.write_text(table + "\n")
    print(table)
    print(f"wrote {out} and {table_path}")


if __name__ == "__main__":
    main()
