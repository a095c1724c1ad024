"""The one summary table of `script/bench/gpu.sh`, read from the logs its steps wrote.

    python script/bench/gpu_summary.py LOG_DIR [--goal-s 15]

Reads `tests.log` (pytest), `pretrain.log` (script/bench/pretrain.py), `finetune.log` (script/bench/finetune.py)
and `iteration.log` (script/bench/iteration.py) from LOG_DIR; a figure a log does not hold (a step that failed or
was skipped) is shown as `-`.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

NUMBER = r"([\d,]+(?:\.\d+)?)"
FINETUNE_ROWS = {  # table label -> regex of script/bench/finetune.py's line (the wall-clock figure)
    "policy chunk queries/s (40 conditions, K=20, chains)": rf"^policy chunk queries/s \([^)]*\)\s+{NUMBER}",
    "PPO update rows/s": rf"^PPO update, rows/s \([^)]*\)\s+{NUMBER}",
    "old-log-prob pass rows/s": rf"^old-log-prob pass, rows/s\s+{NUMBER}",
    "raw vector env steps/s (40 sync envs)": rf"^raw vector env, env steps/s\s+{NUMBER}",
    "rollout env steps/s (sample + env + buffer)": rf"^rollout \(sample\+env\+buffer\), env steps/s, \w+\s+{NUMBER}",
    "paper iteration s (extrapolated from the rates)": rf"^one paper iteration, s \(extrapolated\)\s+{NUMBER}",
    "paper iteration s (finetune.py --full)": rf"^one paper iteration, s \(measured, --full\)\s+{NUMBER}",
    "flow comparison: DPPO iteration s (K=20, K'=10)": rf"^  diffusion \(ft_ppo_diffusion_mlp[^)]*\), s\s+{NUMBER}",
    "flow comparison: ReFlow PPO iteration s (K=K'=4)": rf"^  reflow \(ft_ppo_reflow_mlp[^)]*\), s\s+{NUMBER}",
    "flow comparison: reflow / diffusion (issue 17's goal <= 0.3)": rf"^  reflow / diffusion \([^)]*\)\s+{NUMBER}",
}
PRETRAIN_ROW = re.compile(r"^(\w+)\s+(\d+)\s+(\S+)\s+([\d,]+)\s+([\d,]+)\s")
ITERATION_ROW = re.compile(r"^iteration (\d+) \[([^\]]*)\] (.*)$")


def read(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


def number(text: str) -> float:
    return float(text.replace(",", ""))


def find(pattern: str, text: str) -> float | None:
    """The first captured number of `pattern` in `text` (multi-line), or None."""
    match = re.search(pattern, text, flags=re.MULTILINE)
    return number(match.group(1)) if match else None


def pytest_counts(text: str) -> dict[str, int]:
    """pytest's closing counts (passed, failed, skipped, errors) from its last summary line."""
    lines = [line for line in text.splitlines() if re.search(r"\d+ (passed|failed|skipped|errors?|deselected)", line)]
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)", lines[-1] if lines else ""):
        counts["errors" if word.startswith("error") else word] += int(n)
    return counts


def pretrain_rows(text: str) -> list[tuple[str, int, str, float, float]]:
    """(config, batch, device, end-to-end samples/s, model-only samples/s) per row of pretrain.py's table."""
    rows = []
    for line in text.splitlines():
        match = PRETRAIN_ROW.match(line)
        if match and match.group(1) not in ("config", "torch"):
            key, batch, dev, e2e, model = match.groups()
            rows.append((key, int(batch), dev, number(e2e), number(model)))
    return rows


def iteration_rows(text: str) -> list[tuple[int, str, dict[str, str]]]:
    """(iteration, label, key=value figures) per `iteration ...` line of iteration.py."""
    out = []
    for line in text.splitlines():
        match = ITERATION_ROW.match(line.strip())
        if match:
            figures = dict(part.split("=", 1) for part in match.group(3).split() if "=" in part)
            out.append((int(match.group(1)), match.group(2), figures))
    return out


def table(logs: Path, goal_s: float) -> list[str]:
    """The summary's lines: `| measure | value | note |` rows."""
    rows: list[tuple[str, str, str]] = []
    for key, batch, dev, e2e, model in pretrain_rows(read(logs / "pretrain.log")):
        rows.append((f"pretrain {key} samples/s, end to end ({dev}, batch {batch})", f"{e2e:,.0f}", ""))
        rows.append((f"pretrain {key} samples/s, model only ({dev})", f"{model:,.0f}", ""))
    finetune = read(logs / "finetune.log")
    for label, pattern in FINETUNE_ROWS.items():
        value = find(pattern, finetune)
        text = (
            "-"
            if value is None
            else f"{value:.2f}"
            if value < 10
            else f"{value:,.1f}"
            if value < 100
            else f"{value:,.0f}"
        )
        rows.append((label, text, ""))
    for i, label, fig in iteration_rows(read(logs / "iteration.log")):
        total = float(fig.get("total_s", "nan"))
        paper = fig.get("n_steps") == "500" and fig.get("batch") == "50000"
        verdict = f"{'meets' if total <= goal_s else 'misses'} the {goal_s:g} s goal" if paper else "not paper-size"
        parts = f"rollout {fig.get('rollout_s')} s (env wait {fig.get('env_wait_s')}), update {fig.get('update_s')} s"
        note = f"{verdict}; {parts}" + ("; includes start-up" if i == 1 else "")
        size = f"{fig.get('n_steps')} steps"
        rows.append((f"hopper iteration {i}, {size}, s [{label}]", f"{total:.2f}", note))
    counts = pytest_counts(read(logs / "tests.log"))
    tests = ", ".join(f"{n} {word}" for word, n in counts.items() if n) or "no result"
    rows.append(("CUDA vs CPU tests (pytest -m gpu tests/gpu)", tests, ""))
    width, vwidth = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    lines = [f"| {'measure':<{width}} | {'value':>{vwidth}} | note", f"|{'-' * (width + 2)}|{'-' * (vwidth + 2)}|-----"]
    lines += [f"| {a:<{width}} | {b:>{vwidth}} | {c}" for a, b, c in rows]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", type=Path, help="folder holding the step logs")
    parser.add_argument("--goal-s", type=float, default=15.0, help="goal for one paper-size hopper iteration")
    args = parser.parse_args()
    if not args.logs.is_dir():
        parser.error(f"{args.logs} is not a folder; pass the folder gpu.sh wrote its logs to")
    print("\n".join(table(args.logs, args.goal_s)))


if __name__ == "__main__":
    main()
