"""Regenerate the results table: pretrained vs fine-tuned policies on a small benchmark suite, from data the toolkit
makes itself, with the CPU presets (`*_cpu` configs).

    make results                                            # the default suite, 1 seed, 15 min per fine-tuning run
    python script/results.py --tasks avoid_m2 --seeds 1 --budget-min 5
    python script/results.py --budget-min 60 --seeds 3      # the headline runs (resume across sessions)
    python script/results.py --baselines                    # also DQL, QSM, DIPO, IDQL, RWR, AWR
    python script/results.py --flow                         # also PPO on a rectified-flow policy
    python script/results.py --budget-env-steps 324000 --redo lift/ft_dppo_s0   # continue a run under a new budget

For each task: generate data -> pretrain a diffusion and a Gaussian policy -> evaluate both -> fine-tune the
diffusion policy with DPPO for `--budget-min` minutes of wall time, and the Gaussian one (and the baselines) with
PPO on the same number of env steps as DPPO's run of the same seed -> evaluate every fine-tuned policy. One
pretrained policy per task (seed 0, as DPPO publishes one base per task); fine-tuning seeds 0..N-1; evaluation
seeds 1000 + seed.

Every stage is a documented command line (`script/run.py ...`, `script/dataset/...`), run as a subprocess with its
log in `<out>/work/logs/`; up to `--jobs` stages run at once (default: one per core, each with cores/jobs torch
threads). A stage whose summary `<out>/runs/<task>/<stage>.json` exists is skipped, so an interrupted call resumes
where it stopped (a fine-tuning or pretraining run continues from its last checkpoint); a finished stage whose
outputs are gone (a fresh clone) is redone only when a stage that needs them is still to run. The summaries are
small JSON files (final numbers, learning curves) meant to be committed: `<out>/RESULTS.md` and the learning-curve
PNGs are drawn from them alone (`--report-only` redraws them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from agent.checkpoint import latest_checkpoint  # noqa: E402
from agent.config import CFG_ROOT  # noqa: E402
from agent.logger import read_metrics  # noqa: E402

RUN = "script/run.py"


# ------------------------------------------------------------------------------------------------ the suite
@dataclass(frozen=True)
class Method:
    """A fine-tuning method: which pretrained policy it starts from and which configs it runs."""

    key: str  # stage names and summaries: ft_<key>_s<seed>
    label: str  # the table's name
    family: str  # a key of FAMILIES: the pretrained policy it fine-tunes
    finetune: str  # finetune config name (cfg/<suite>/finetune/<ft_env>/<name>.yaml)
    reference: bool = False  # the method whose wall-time budget sets everyone's env-step budget


@dataclass(frozen=True)
class Family:
    """A pretrained policy: its pretraining and evaluation configs."""

    pretrain: str
    eval: str


@dataclass(frozen=True)
class Task:
    """One row group of the table."""

    suite: str  # gym | robomimic | d3il
    data_env: str  # the data / pretraining folder name (hopper-medium-v2)
    ft_env: str  # the fine-tuning / evaluation folder name (hopper-v2)
    generate: list[str]  # the data generator's command (after `python`)
    metric: str  # headline metric: episode_return | success_rate
    eval_overrides: list[str] = field(default_factory=list)


FAMILIES = {
    "diffusion": Family("pre_diffusion_mlp_cpu", "eval_diffusion_mlp"),
    "gaussian": Family("pre_gaussian_mlp_cpu", "eval_gaussian_mlp"),
    "reflow": Family("pre_reflow_mlp_cpu", "eval_reflow_mlp"),
}
METHODS = [
    Method("dppo", "DPPO", "diffusion", "ft_ppo_diffusion_mlp_cpu", reference=True),
    Method("gaussian_ppo", "Gaussian PPO", "gaussian", "ft_ppo_gaussian_mlp_cpu"),
]
BASELINES = [
    Method(algo, algo.upper(), "diffusion", f"ft_{algo}_diffusion_mlp") for algo in ("dql", "qsm", "dipo", "idql")
] + [Method(algo, algo.upper(), "diffusion", f"ft_{algo}_diffusion_mlp") for algo in ("rwr", "awr")]

FLOW = [Method("reflow_ppo", "ReFlow PPO", "reflow", "ft_ppo_reflow_mlp_cpu")]


def chosen_methods(args: argparse.Namespace) -> list[Method]:
    """DPPO and Gaussian PPO, plus the baselines (`--baselines`) and the flow policy (`--flow`)."""
    return METHODS + (BASELINES if args.baselines else []) + (FLOW if getattr(args, "flow", False) else [])


GEN = "script/dataset"
TASKS: dict[str, Task] = {
    "hopper": Task(
        "gym",
        "hopper-medium-v2",
        "hopper-v2",
        [f"{GEN}/generate_locomotion.py", "--task", "hopper-medium-v2", "--band", "400", "2000", "--max-itr", "200"],
        "episode_return",
        ["env.n_envs=20", "n_episodes=40"],
    ),
    "walker2d": Task(
        "gym",
        "walker2d-medium-v2",
        "walker2d-v2",
        [f"{GEN}/generate_locomotion.py", "--task", "walker2d-medium-v2", "--band", "400", "2500", "--max-itr", "200"],
        "episode_return",
        ["env.n_envs=20", "n_episodes=40"],
    ),
    "lift": Task(
        "robomimic",
        "lift",
        "lift",
        [f"{GEN}/generate_robomimic.py", "--task", "lift", "--num-episodes", "20"],
        "success_rate",
        ["env.n_envs=25", "n_episodes=50"],
    ),
    "avoid_m2": Task(
        "d3il",
        "avoid_m2",
        "avoid_m2",
        [f"{GEN}/generate_avoid.py", "--variants", "m2", "--num-episodes", "200"],
        "success_rate",
        ["env.n_envs=50", "n_episodes=200"],
    ),
}
DEFAULT_TASKS = ["hopper", "walker2d", "lift", "avoid_m2"]


# ------------------------------------------------------------------------------------------------ stages
@dataclass
class Stage:
    """One command of the pipeline and how to summarise what it produced."""

    task: str
    name: str
    cmd: list[str]
    deps: list[str]
    summarize: Callable[[Stage], dict[str, Any]]
    artifact: Callable[[], Path | None] | None = None  # the file later stages need (None: only the summary)
    prepare: Callable[[Stage], list[str]] = lambda stage: []  # extra arguments decided at launch (resume, budget)
    rundir: Path | None = None  # the stage's run folders are rundir/seg<k> (one per resumed segment)
    summary_only_deps: tuple[str, ...] = ()  # deps whose summary, not artifact, this stage reads

    def uses_artifact_of(self, key: str) -> bool:
        return key in self.deps and key not in self.summary_only_deps

    @property
    def key(self) -> str:
        return f"{self.task}/{self.name}"


class Pipeline:
    """Builds the stages of every task and runs them (see the module docstring)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out: Path = args.out.resolve()
        self.work = self.out / "work"
        self.data_dir = self.work / "data"
        self.log_dir = self.work / "log"
        self.stages: dict[str, Stage] = {}
        methods = chosen_methods(args)
        for task in args.tasks:
            self._add_task(task, methods)

    # ---------------------------------------------------------------- paths
    def summary_path(self, stage: Stage) -> Path:
        return self.out / "runs" / stage.task / f"{stage.name}.json"

    def log_path(self, stage: Stage) -> Path:
        return self.work / "logs" / stage.task / f"{stage.name}.log"

    # ---------------------------------------------------------------- building
    def _add(self, stage: Stage) -> None:
        self.stages[stage.key] = stage

    def _add_task(self, name: str, methods: list[Method]) -> None:
        task = TASKS[name]
        py = sys.executable
        data_folder = self.data_dir / task.suite / task.data_env
        self._add(
            Stage(
                name,
                "data",
                [py, *task.generate, "--data-dir", str(self.data_dir)],
                [],
                lambda s, folder=data_folder: summarize_data(folder),
                artifact=lambda folder=data_folder: folder / "train.npz",
            )
        )
        common = [f"device={self.args.device}", "wandb=null"]
        for family_name, family in FAMILIES.items():
            if not any(m.family == family_name for m in methods):
                continue
            if not (CFG_ROOT / task.suite / "pretrain" / task.data_env / f"{family.pretrain}.yaml").is_file():
                continue  # no CPU preset of this family for the task: its methods are left out below
            rundir = self.log_dir / name / f"pretrain_{family_name}"
            self._add(
                Stage(
                    name,
                    f"pretrain_{family_name}",
                    [
                        py,
                        RUN,
                        f"--config-name={family.pretrain}",
                        f"--config-dir=cfg/{task.suite}/pretrain/{task.data_env}",
                    ]
                    + common
                    + ["seed=0"],
                    [f"{name}/data"],
                    summarize_pretrain,
                    artifact=lambda d=rundir: latest_checkpoint_in(d),
                    prepare=self._prepare_training,
                    rundir=rundir,
                )
            )
            for seed in range(self.args.seeds):
                self._add_eval(
                    name, task, family_name, f"eval_pre_{family_name}_s{seed}", f"{name}/pretrain_{family_name}", seed
                )
        for method in methods:
            config = CFG_ROOT / task.suite / "finetune" / task.ft_env / f"{method.finetune}.yaml"
            if not config.is_file() or f"{name}/pretrain_{method.family}" not in self.stages:
                continue  # e.g. no baseline configs for the Avoid task (DPPO has none either)
            for seed in range(self.args.seeds):
                stage_name = f"ft_{method.key}_s{seed}"
                deps = [f"{name}/pretrain_{method.family}"]
                budget_from: tuple[str, ...] = ()
                if not method.reference:
                    budget_from = (f"{name}/ft_{reference_method(methods).key}_s{seed}",)
                rundir = self.log_dir / name / stage_name
                self._add(
                    Stage(
                        name,
                        stage_name,
                        [
                            py,
                            RUN,
                            f"--config-name={method.finetune}",
                            f"--config-dir=cfg/{task.suite}/finetune/{task.ft_env}",
                        ]
                        + common
                        + [f"seed={seed}"],
                        deps + list(budget_from),
                        summarize_finetune,
                        artifact=lambda d=rundir: latest_checkpoint_in(d),
                        prepare=lambda s, m=method: self._prepare_training(s) + self._budget(s, m, methods),
                        rundir=rundir,
                        summary_only_deps=budget_from,
                    )
                )
                self._add_eval(name, task, method.family, f"eval_{method.key}_s{seed}", f"{name}/{stage_name}", seed)

    def _add_eval(self, name: str, task: Task, family: str, stage_name: str, source: str, seed: int) -> None:
        rundir = self.log_dir / name / stage_name
        self._add(
            Stage(
                name,
                stage_name,
                [
                    sys.executable,
                    RUN,
                    f"--config-name={FAMILIES[family].eval}",
                    f"--config-dir=cfg/{task.suite}/eval/{task.ft_env}",
                    f"device={self.args.device}",
                    "wandb=null",
                    f"seed={1000 + seed}",
                    *task.eval_overrides,
                ],
                [source],
                summarize_eval,
                prepare=lambda s, src=source: self._prepare_eval(s, src),
                rundir=rundir,
            )
        )

    # ---------------------------------------------------------------- launch-time arguments
    def _prepare_training(self, stage: Stage) -> list[str]:
        """A new segment folder; `resume=` the newest earlier segment that has a checkpoint."""
        assert stage.rundir is not None
        segments = sorted_segments(stage.rundir)
        extra = [f"logdir={stage.rundir / f'seg{len(segments)}'}"]
        with_ckpt = [s for s in segments if latest_checkpoint(s) is not None]
        if with_ckpt:
            extra.append(f"resume={with_ckpt[-1]}")
        for dep in stage.deps:
            if "/pretrain_" in dep:
                extra.append(f"base_policy_path={latest_checkpoint_in(self.stages[dep].rundir)}")
        return extra

    def _budget(self, stage: Stage, method: Method, methods: list[Method]) -> list[str]:
        """DPPO: the wall-time budget (or, with --budget-env-steps, an env-step budget that contention on the cores
        cannot shrink, under a wall-time cap of 10x); the others: DPPO's env steps of the same seed (and a cap)."""
        minutes = self.args.budget_min
        env_steps = getattr(self.args, "budget_env_steps", None)
        if method.reference:
            if env_steps is not None:
                return [f"train.max_env_steps={env_steps}", f"train.max_wall_min={10 * minutes}"]
            return [f"train.max_wall_min={minutes}"]
        seed = stage.name.rsplit("_s", 1)[1]
        ref = self.stages[f"{stage.task}/ft_{reference_method(methods).key}_s{seed}"]
        steps = json.loads(self.summary_path(ref).read_text())["env_steps"]
        return [f"train.max_env_steps={steps}", f"train.max_wall_min={3 * minutes}"]

    def _prepare_eval(self, stage: Stage, source: str) -> list[str]:
        """The checkpoint to evaluate, and the sampling keys it was fine-tuned with (K', DDIM)."""
        from agent.checkpoint import load_checkpoint

        assert stage.rundir is not None
        ckpt_path = latest_checkpoint_in(self.stages[source].rundir)
        ckpt = load_checkpoint(ckpt_path)
        extra = [f"logdir={stage.rundir / f'seg{len(sorted_segments(stage.rundir))}'}", f"base_policy_path={ckpt_path}"]
        if ckpt.get("kind") == "finetune":
            model = (ckpt.get("config") or {}).get("model") or {}
            if model.get("ft_denoising_steps"):  # K' > 0 (the policy schema's default 0: nothing fine-tuned apart)
                extra.append(f"ft_denoising_steps={int(ckpt.get('ft_denoising_steps', 0))}")
            if model.get("use_ddim"):
                extra += ["++model.use_ddim=true", f"++model.ddim_steps={model['ddim_steps']}"]
        return extra

    # ---------------------------------------------------------------- which stages run
    def redo(self, keys: list[str]) -> list[str]:
        """Forget the summaries of `keys` and of every stage that needs them, directly or not, so that they run again
        (a fine-tuning run continues from its last checkpoint, e.g. under a larger budget). Returns the keys forgotten.
        """
        unknown = [k for k in keys if k not in self.stages]
        if unknown:
            raise SystemExit(f"error: --redo {unknown[0]} is not a stage; stages: {', '.join(self.stages)}")
        gone = set(keys)
        grew = True
        while grew:
            grew = False
            for key, stage in self.stages.items():
                if key not in gone and any(d in gone for d in stage.deps):
                    gone.add(key)
                    grew = True
        for key in gone:
            self.summary_path(self.stages[key]).unlink(missing_ok=True)
        return [k for k in self.stages if k in gone]

    def needed(self) -> list[Stage]:
        """Stages without a summary, plus finished stages whose artifact is gone while a stage that needs it is
        still to run (in build order)."""
        memo: dict[str, bool] = {}

        def is_needed(key: str) -> bool:
            if key not in memo:
                stage = self.stages[key]
                if not self.summary_path(stage).is_file():
                    memo[key] = True
                elif stage.artifact is None:
                    memo[key] = False
                else:
                    art = stage.artifact()
                    gone = art is None or not art.exists()
                    memo[key] = gone and any(is_needed(s.key) for s in self.stages.values() if s.uses_artifact_of(key))
            return memo[key]

        return [s for k, s in self.stages.items() if is_needed(k)]

    # ---------------------------------------------------------------- running
    def run(self) -> int:
        from tqdm import tqdm

        signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started as a background job
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        todo = {s.key: s for s in self.needed()}
        total = len(self.stages)
        if not todo:
            print(f"every stage of {', '.join(self.args.tasks)} is done; redrawing the report")
            return 0
        jobs = max(1, self.args.jobs)
        threads = max(1, (os.cpu_count() or 1) // jobs)
        running: dict[str, tuple[subprocess.Popen, float, Any]] = {}
        failed: dict[str, str] = {}
        bar = tqdm(total=total, initial=total - len(todo), desc="results", unit="stage", dynamic_ncols=True)
        try:
            while todo or running:
                for key, (proc, start, fh) in list(running.items()):
                    if proc.poll() is None:
                        continue
                    fh.close()
                    del running[key]
                    stage = self.stages[key]
                    if proc.returncode == 0:
                        self._write_summary(stage, time.perf_counter() - start)
                        bar.write(f"done   {key} ({(time.perf_counter() - start) / 60:.1f} min)")
                    else:
                        failed[key] = f"exit {proc.returncode}; log: {self.log_path(stage)}"
                        bar.write(f"FAILED {key}: {failed[key]}\n{tail(self.log_path(stage))}")
                    bar.update(1)
                for key in blocked_by(todo, failed):
                    failed[key] = "a stage it needs failed"
                    del todo[key]
                    bar.update(1)
                ready = [k for k, s in todo.items() if not any(d in todo or d in running for d in s.deps)]
                for key in ready[: jobs - len(running)]:
                    stage = todo.pop(key)
                    running[key] = self._launch(stage, threads)
                    bar.write(f"start  {key}")
                label = ", ".join(running)[:80]
                if label != bar.postfix:
                    bar.set_postfix_str(label)
                time.sleep(0.5)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: each run stops as on Ctrl-C (its checkpoint completed)
            for proc, _, _ in running.values():
                proc.send_signal(signal.SIGINT)
            for proc, _, _ in running.values():
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
            bar.close()
            print("interrupted: run the same command again to continue where it stopped", file=sys.stderr)
            return 130
        bar.close()
        for key, why in failed.items():
            print(f"failed: {key}: {why}", file=sys.stderr)
        return 1 if failed else 0

    def _launch(self, stage: Stage, threads: int) -> tuple[subprocess.Popen, float, Any]:
        cmd = stage.cmd + stage.prepare(stage)
        env = {
            **os.environ,
            "DPPO_DATA_DIR": str(self.data_dir),
            "DPPO_LOG_DIR": str(self.log_dir),
            "WANDB_MODE": "disabled",
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "PYTHONUNBUFFERED": "1",
        }
        log_path = self.log_path(stage)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(log_path, "a")  # noqa: SIM115 (closed when the process ends)
        fh.write(f"\n$ {shlex.join(cmd)}\n")
        fh.flush()
        # SIGINT at its default in the child (a shell's background job starts with it ignored), so that stopping
        # the pipeline stops each run as Ctrl-C does
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        return proc, time.perf_counter(), fh

    def _write_summary(self, stage: Stage, wall_s: float) -> None:
        summary = {"task": stage.task, "stage": stage.name, **stage.summarize(stage)}
        summary.setdefault("wall_s", round(wall_s, 1))
        summary["stage_wall_s"] = round(wall_s, 1)
        path = self.summary_path(stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(summary, indent=1))
        tmp.replace(path)


def blocked_by(todo: dict[str, Stage], failed: Mapping[str, str]) -> list[str]:
    """The stages of `todo` that need a failed stage, directly or through other stages of `todo` (in todo order)."""
    blocked: set[str] = set()
    grew = True
    while grew:
        grew = False
        for key, stage in todo.items():
            if key not in blocked and any(d in failed or d in blocked for d in stage.deps):
                blocked.add(key)
                grew = True
    return [k for k in todo if k in blocked]


def reference_method(methods: list[Method]) -> Method:
    return next(m for m in methods if m.reference)


def sorted_segments(rundir: Path) -> list[Path]:
    """The stage's segment folders seg0, seg1, ... (a resumed run writes a new one), in order."""
    if not rundir.is_dir():
        return []
    segs = [p for p in rundir.iterdir() if p.is_dir() and p.name.startswith("seg") and p.name[3:].isdigit()]
    return sorted(segs, key=lambda p: int(p.name[3:]))


def latest_checkpoint_in(rundir: Path | None) -> Path | None:
    """The newest checkpoint of the newest segment that has one."""
    if rundir is None:
        return None
    for seg in reversed(sorted_segments(rundir)):
        ckpt = latest_checkpoint(seg)
        if ckpt is not None:
            return ckpt
    return None


def tail(path: Path, n: int = 15) -> str:
    lines = path.read_text(errors="replace").replace("\r", "\n").splitlines() if path.is_file() else []
    return "\n".join("    " + line for line in lines[-n:])


# ------------------------------------------------------------------------------------------------ summaries
def merged_rows(rundir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl rows of all segments: a resumed segment replaces the earlier rows from its first step on."""
    rows: list[dict[str, Any]] = []
    for seg in sorted_segments(rundir):
        if not (seg / "metrics.jsonl").is_file():
            continue
        new = read_metrics(seg)
        if new:
            first = min(r["step"] for r in new)
            rows = [r for r in rows if r["step"] < first] + new
    return rows


def summarize_data(folder: Path) -> dict[str, Any]:
    with np.load(folder / "train.npz") as data:
        lengths = data["traj_lengths"]
        info = {"episodes": int(len(lengths)), "transitions": int(lengths.sum())}
    gen = folder / "generation.json"
    if gen.is_file():
        info["generation"] = json.loads(gen.read_text())
    return info


def summarize_pretrain(stage: Stage) -> dict[str, Any]:
    """Epochs, final loss and training time (summed over resumed segments)."""
    assert stage.rundir is not None
    rows = [r for r in merged_rows(stage.rundir) if "pretrain/loss" in r]
    seg_times = [
        max((r.get("time/elapsed_s", 0.0) for r in read_metrics(seg)), default=0.0)
        for seg in sorted_segments(stage.rundir)
        if (seg / "metrics.jsonl").is_file()
    ]
    ckpt = latest_checkpoint_in(stage.rundir)
    return {
        "epochs": rows[-1]["step"] if rows else None,
        "final_loss": rows[-1]["pretrain/loss"] if rows else None,
        "wall_s": round(sum(seg_times), 1),
        "checkpoint": ckpt.name if ckpt else None,
    }


def downsample(n: int, limit: int = 300) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, limit)).round().astype(int)) if n else np.zeros(0, int)


def summarize_finetune(stage: Stage) -> dict[str, Any]:
    """Final env steps, iterations and wall time, and the learning curves (training episodes; evaluations)."""
    assert stage.rundir is not None
    rows = merged_rows(stage.rundir)
    train = [r for r in rows if "train/env_steps" in r]
    curve: dict[str, list] = {"env_steps": [], "episode_return": [], "success_rate": []}
    idx = downsample(len(train))
    for i in idx:
        r = train[i]
        curve["env_steps"].append(r["train/env_steps"])
        curve["episode_return"].append(r.get("train/episode_return"))
        curve["success_rate"].append(r.get("train/success_rate"))
    evals: dict[str, list] = {"env_steps": [], "episode_return": [], "success_rate": []}
    env_steps = 0
    for r in rows:
        env_steps = r.get("train/env_steps", env_steps)
        if "eval/episode_return" in r:
            evals["env_steps"].append(env_steps)
            evals["episode_return"].append(r["eval/episode_return"])
            evals["success_rate"].append(r.get("eval/success_rate"))
    from agent.checkpoint import load_checkpoint

    ckpt = load_checkpoint(latest_checkpoint_in(stage.rundir))
    return {
        "iterations": int(ckpt["itr"]),
        "env_steps": int(ckpt["env_steps"]),
        "wall_s": round(float(ckpt.get("wall_s", ckpt.get("elapsed_s", 0.0))), 1),
        "curve": curve,
        "eval_curve": evals,
    }


def summarize_eval(stage: Stage) -> dict[str, Any]:
    assert stage.rundir is not None
    result = json.loads((sorted_segments(stage.rundir)[-1] / "eval_result.json").read_text())
    result.pop("checkpoint", None)
    return result


# ------------------------------------------------------------------------------------------------ the report
def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}, Python {platform.python_version()}"


def fmt(values: list[float], metric: str) -> str:
    if not values:
        return "-"
    digits = 3 if metric == "success_rate" else 0
    mean, std = float(np.mean(values)), float(np.std(values))
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def load_summaries(out: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """{task: {stage: summary}} of every summary under `<out>/runs`."""
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for path in sorted((out / "runs").glob("*/*.json")):
        found.setdefault(path.parent.name, {})[path.stem] = json.loads(path.read_text())
    return found


def report(out: Path, methods: list[Method], total_s: float | None) -> Path:
    """Write `<out>/RESULTS.md` and one learning-curve PNG per task from the summaries; returns the table's path."""
    summaries = load_summaries(out)
    lines = [
        "# Results",
        "",
        "Made by `script/results.py` (`make results`) from data the toolkit generated itself, with the CPU presets",
        "(`*_cpu` configs). Pretrained: the behaviour-cloned policy (one per task); fine-tuned: after the run's",
        "budget (DPPO: wall time or env steps; the others: DPPO's env steps of the same seed). Mean ± std over seeds",
        "(each evaluated with its own evaluation seed); the pretrained column is the same policy evaluated with each",
        "seed's evaluation seed.",
        "",
        f"Machine: {machine()}.",
        "",
        "| task | metric | method | seeds | pretrained | fine-tuned | change | env steps | fine-tune wall (min) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for task_name, stages in summaries.items():
        task = TASKS.get(task_name)
        if task is None:
            continue
        metric = task.metric
        for method in methods:
            seeds = sorted(int(k.rsplit("_s", 1)[1]) for k in stages if k.startswith(f"eval_{method.key}_s"))
            if not seeds:
                continue
            pre = [
                stages[f"eval_pre_{method.family}_s{s}"][metric]
                for s in seeds
                if f"eval_pre_{method.family}_s{s}" in stages
            ]
            post = [stages[f"eval_{method.key}_s{s}"][metric] for s in seeds]
            runs = [stages[f"ft_{method.key}_s{s}"] for s in seeds if f"ft_{method.key}_s{s}" in stages]
            change = "-"
            if pre and post:
                delta = float(np.mean(post) - np.mean(pre))
                if metric == "success_rate":
                    change = f"{100 * delta:+.1f} pts"
                else:
                    change = f"{delta:+.0f} ({100 * delta / max(abs(float(np.mean(pre))), 1e-9):+.0f}%)"
            steps = f"{np.mean([r['env_steps'] for r in runs]):,.0f}" if runs else "-"
            wall = f"{np.mean([r['wall_s'] for r in runs]) / 60:.1f}" if runs else "-"
            lines.append(
                f"| {task_name} | {metric} | {method.label} | {len(seeds)} | {fmt(pre, metric)} | {fmt(post, metric)} "
                f"| {change} | {steps} | {wall} |"
            )
        plot_task(out, task_name, stages, methods, metric)
    lines.append("")
    for task_name in summaries:
        if (out / f"{task_name}.png").is_file():
            lines.append(f"![{task_name}]({task_name}.png)")
    data_lines = []
    for task_name, stages in summaries.items():
        for family in FAMILIES:
            pre = stages.get(f"pretrain_{family}")
            if pre:
                data_lines.append(
                    f"- {task_name}: {family} pretraining {pre.get('epochs')} epochs, final loss "
                    f"{pre.get('final_loss') or float('nan'):.4g}, {(pre.get('wall_s') or 0) / 60:.1f} min"
                )
        data = stages.get("data")
        if data:
            gen = data.get("generation", {})
            extra = f", demonstrator return {gen['return_mean']:.0f}" if "return_mean" in gen else ""
            data_lines.append(
                f"- {task_name}: data {data['episodes']} episodes, {data['transitions']:,} transitions{extra}"
            )
    if data_lines:
        lines += ["", "Data and pretraining:", "", *data_lines]
    if total_s is not None:
        lines += ["", f"Last call of `script/results.py`: {total_s / 60:.1f} min of wall time."]
    if (out / "NOTES.md").is_file():
        lines += ["", "How these runs were made (budgets, machine load): [NOTES.md](NOTES.md)."]
    path = out / "RESULTS.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def plot_task(out: Path, task_name: str, stages: dict[str, dict[str, Any]], methods: list[Method], metric: str) -> None:
    """Training-episode `metric` against env steps: mean ± std over seeds per method, pretrained levels dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    drawn = False
    for i, method in enumerate(methods):
        runs = [v for k, v in stages.items() if k.startswith(f"ft_{method.key}_s")]
        series = []
        for run in runs:
            x = np.asarray(run["curve"]["env_steps"], float)
            y = np.asarray([np.nan if v is None else v for v in run["curve"][metric]], float)
            ok = ~np.isnan(y)
            if ok.sum() >= 2:
                series.append((x[ok], y[ok]))
        if not series:
            continue
        grid = np.linspace(0, min(x[-1] for x, _ in series), 100)
        ys = np.stack([np.interp(grid, x, y) for x, y in series])
        color = f"C{i}"
        ax.plot(grid, ys.mean(0), color=color, label=f"{method.label} (n={len(series)})")
        if len(series) > 1:
            ax.fill_between(grid, ys.mean(0) - ys.std(0), ys.mean(0) + ys.std(0), color=color, alpha=0.2)
        pre = [v[metric] for k, v in stages.items() if k.startswith(f"eval_pre_{method.family}_s")]
        if pre:
            ax.axhline(float(np.mean(pre)), color=color, ls="--", lw=1, label=f"pretrained {method.family} (eval)")
        drawn = True
    if not drawn:
        plt.close(fig)
        return
    ax.set_title(f"{task_name}: fine-tuning (training episodes)")
    ax.set_xlabel("env steps")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"{task_name}.png", dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ entry point
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS, choices=sorted(TASKS), metavar="TASK")
    parser.add_argument("--seeds", type=int, default=1, help="fine-tuning seeds 0..N-1 (default 1)")
    parser.add_argument("--budget-min", type=float, default=15.0, help="DPPO's wall-time minutes per fine-tuning run")
    parser.add_argument(
        "--budget-env-steps",
        type=int,
        default=None,
        help="instead, DPPO's env steps per fine-tuning run (a budget that sharing the cores cannot shrink)",
    )
    parser.add_argument("--redo", nargs="+", default=[], metavar="STAGE", help="run these stages (task/stage) again")
    parser.add_argument("--baselines", action="store_true", help="also DQL, QSM, DIPO, IDQL, RWR and AWR")
    parser.add_argument("--flow", action="store_true", help="also PPO on a rectified-flow policy (ReFlow PPO)")
    parser.add_argument("--device", default="cpu", help="device of every run: cpu (default), cuda, cuda:N")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="stages at once (default: cores)")
    parser.add_argument("--out", type=Path, default=REPO / "results", help="results folder (default results/)")
    parser.add_argument("--report-only", action="store_true", help="only redraw RESULTS.md and PNGs from summaries")
    parser.add_argument("--dry-run", action="store_true", help="list the stages that would run, and stop")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.budget_min <= 0 or args.jobs < 1:
        parser.error("--seeds and --jobs must be >= 1 and --budget-min > 0")
    if args.budget_env_steps is not None and args.budget_env_steps < 1:
        parser.error("--budget-env-steps must be >= 1")
    methods = chosen_methods(args)
    start = time.perf_counter()
    code = 0
    if not args.report_only:
        pipeline = Pipeline(args)
        if args.redo and not args.dry_run:
            print(f"running again: {', '.join(pipeline.redo(args.redo))}")
        if args.dry_run:
            for stage in pipeline.needed():
                print(f"{stage.key}: {shlex.join(stage.cmd)}")
            return 0
        code = pipeline.run()
    path = report(args.out.resolve(), methods, None if args.report_only else time.perf_counter() - start)
    print(f"\n{path.read_text()}\ntable: {path}")
    return code


if __name__ == "__main__":
    sys.exit(main())
