"""Robomimic rollout throughput against the raw robosuite env on all cores.

    python script/bench/rollout.py [--task lift|can] [--n-envs 50] [--steps 75] [--rounds 3] [--threads N]
    python script/bench/envs.py --rollout lift      # the same, from the env benchmark

"Raw robosuite env on all cores": N processes (N = the cores this process may run on, `--cores` to change it),
each stepping one raw robosuite env (`robosuite.make` with the task's env_meta, no cameras) with random actions
and resetting every episode (300 steps), all at once; the figure is their summed env steps/s.

Rollout: `PPOAgent.collect()` of the real `cfg/robomimic/finetune/<task>/ft_ppo_diffusion_mlp` config (diffusion
sampling with chains + env + buffer writes, from an untrained base checkpoint: the speed does not depend on the
weights), `--steps` chunks per env per round, timed over the whole call (the reset included). Env setups:

* config: the config's env block (robomimic: `env.workers: auto`, one worker process per core, and
  `env.pipeline: true`, two groups: the policy samples one while the workers step the other);
* unpipelined: the same workers, one group (`env.pipeline: false`);
* sync: all envs stepped in this process (`env.workers: null`, `env.pipeline: false`), the setup before workers.

Raw and rollouts are timed in interleaved rounds (the machine may be shared); rollout / raw is the median of the
per-round ratios. Goal: config >= 0.7.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from agent.config import CFG_ROOT, compose  # noqa: E402
from env.factory import available_cores  # noqa: E402
from script.bench.timing import paired  # noqa: E402

SETUPS = {
    "config": {},
    "unpipelined": {"pipeline": False},
    "sync": {"workers": None, "pipeline": False},
}
EPISODE_STEPS = 300


def _raw_worker(task: str, seconds: float, barrier: Any, results: Any, seed: int) -> None:
    """Build one raw robosuite env, wait for the others, then step it with random actions for `seconds`."""
    logging.disable(logging.WARNING)
    from env.suites.robomimic import load_env_meta, make_robosuite_env

    env = make_robosuite_env(load_env_meta(task))
    env.reset()
    low, high = env.action_spec
    actions = np.random.default_rng(seed).uniform(low, high, (EPISODE_STEPS, len(low)))
    for a in actions[:10]:  # warm-up
        env.step(a)
    env.reset()
    barrier.wait()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        env.step(actions[n % EPISODE_STEPS])
        n += 1
        if n % EPISODE_STEPS == 0:
            env.reset()
    results.put((n, time.perf_counter() - start))
    env.close()


def raw_rate(task: str, n_procs: int, seconds: float) -> tuple[float, float]:
    """(summed env steps/s, mean per-process steps/s) of `n_procs` raw robosuite envs stepped concurrently, one
    per process (forked: nothing renders), over `seconds` after they are all built."""
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(n_procs), ctx.Queue()
    procs = [ctx.Process(target=_raw_worker, args=(task, seconds, barrier, results, i)) for i in range(n_procs)]
    for p in procs:
        p.start()
    counts = [results.get(timeout=seconds + 600) for _ in procs]
    for p in procs:
        p.join()
    rates = [n / t for n, t in counts]
    return float(sum(rates)), float(np.mean(rates))


def build_agent(task: str, tmp: Path, n_envs: int, steps: int, device: str) -> Any:
    """PPOAgent of the task's ft_ppo_diffusion_mlp config on an untrained base checkpoint."""
    from agent.finetune.ppo import PPOAgent
    from script.bench.finetune import write_base_checkpoint

    pre_dir = CFG_ROOT / "robomimic/pretrain" / task
    base = write_base_checkpoint(tmp / "pre", pre_dir, "pre_diffusion_mlp")
    overrides = [
        f"device={device}",
        "wandb=null",
        f"log_dir={tmp}/log",
        f"data_dir={tmp}/data",  # no dataset: the env normalises with the checkpoint's statistics
        f"base_policy_path={base}",
        f"train.n_steps={steps}",
        f"env.n_envs={n_envs}",
    ]
    return PPOAgent(compose(CFG_ROOT / "robomimic/finetune" / task, "ft_ppo_diffusion_mlp", overrides))


def describe(env: Any) -> str:
    """`sync`, or `<W> workers x <G> groups` for a `PipelinedVectorEnv`."""
    workers = getattr(env, "n_workers", None)
    return "sync" if workers is None else f"{workers} workers x {len(env.groups)} group(s)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="lift", choices=["lift", "can"])
    parser.add_argument("--n-envs", type=int, default=50, help="sub-envs of the rollout (the config's: 50)")
    parser.add_argument("--steps", type=int, default=75, help="chunks per env per rollout round (75 = 300 steps)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cores", type=int, default=0, help="raw env processes (0: the available cores)")
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.n_envs < 1 or args.steps < 1 or args.rounds < 1 or args.cores < 0:
        parser.error("--n-envs, --steps and --rounds must be >= 1, --cores >= 0")
    logging.disable(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    from agent.rollout import make_env

    cores = args.cores or available_cores()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        agent = build_agent(args.task, Path(tmp), args.n_envs, args.steps, args.device)
        envs = {}
        for name in args.setups:
            if name == "config":
                envs[name] = agent.env
                continue
            setup = replace(agent.exp.env, **SETUPS[name])
            envs[name] = make_env(setup, agent.logdir, agent.normalization, agent.seed)
        kinds = {name: describe(env) for name, env in envs.items()}

        def rollout(name: str) -> float:
            agent.env, agent._obs = envs[name], None
            t0 = time.perf_counter()
            steps = agent.collect()["rollout_env_steps"]
            return steps / (time.perf_counter() - t0)

        for name in envs:  # warm-up (first resets, worker start-up)
            rollout(name)
        seconds = None
        rates: dict[str, list[float]] = {name: [] for name in ["raw", *envs]}
        per_proc = []
        for r in range(args.rounds):
            order = list(envs)[:: -1 if r % 2 else 1]
            for name in order:
                rates[name].append(rollout(name))
                print(f"round {r + 1}: rollout {name:11s} {rates[name][-1]:8.0f} env steps/s", flush=True)
            seconds = seconds or max(5.0, args.n_envs * args.steps * 4 / rates[order[0]][-1])
            total, one = raw_rate(args.task, cores, seconds)
            rates["raw"].append(total)
            per_proc.append(one)
            print(f"round {r + 1}: raw x{cores}     {total:8.0f} env steps/s ({one:.0f} per process)", flush=True)
        for env in envs.values():
            env.close()

    print(
        f"\nrobomimic {args.task}: {args.n_envs} envs, {args.steps} chunks x {agent.act_steps} steps per round, "
        f"{cores} cores, {torch.get_num_threads()} torch threads, {args.rounds} rounds (medians)"
    )
    print(f"{'measure':44s} {'env steps/s':>12s} {'/ raw':>8s}")
    print(f"{f'raw robosuite env x {cores} processes':44s} {np.median(rates['raw']):>12,.0f} {'1.00':>8s}")
    print(f"{'  (one process)':44s} {np.median(per_proc):>12,.0f}")
    for name in envs:
        ratio = paired(rates[name], rates["raw"])
        print(f"{f'rollout, {name} ({kinds[name]})':44s} {np.median(rates[name]):>12,.0f} {ratio:>8.2f}")
    print(f"(goal: config / raw >= 0.7; total {time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
