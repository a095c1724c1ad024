"""Pretraining throughput: samples/s end to end (data + step + EMA) and model-only, per config.

    python script/bench/pretrain.py [--device cpu] [--steps 200] [--configs hopper can]

Uses the real configs (`cfg/gym/pretrain/hopper-medium-v2/pre_diffusion_mlp`, `cfg/robomimic/pretrain/can/
pre_diffusion_mlp`) and the real `PretrainAgent`, on a generated dataset of D4RL-like size. Reference figures on a
2-core CPU (DPPO, torch 2.13): hopper ~22k samples/s end to end, ~32k model-only; can ~26k / ~34k.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from agent.config import CFG_ROOT, compose  # noqa: E402
from agent.pretrain import PretrainAgent  # noqa: E402

CONFIGS = {
    "hopper": ("gym/pretrain/hopper-medium-v2", "pre_diffusion_mlp", 22_000),
    "can": ("robomimic/pretrain/can", "pre_diffusion_mlp", 26_000),
}


def write_dataset(path: Path, obs_dim: int, action_dim: int, n_traj: int = 200, length: int = 500) -> None:
    rng = np.random.default_rng(0)
    n = n_traj * length
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        states=rng.uniform(-1, 1, (n, obs_dim)).astype(np.float32),
        actions=rng.uniform(-1, 1, (n, action_dim)).astype(np.float32),
        traj_lengths=np.full(n_traj, length),
    )


def measure(agent: PretrainAgent, steps: int, end_to_end: bool, repeats: int = 3) -> float:
    """Median samples/s over `repeats` timed runs of `steps` optimizer steps."""
    bs = agent.cfg.train.batch_size
    fixed = agent.dataset.get_batch(torch.arange(bs, device=agent.device))
    rates = []
    for _ in range(repeats + 1):  # the first run warms up
        it = agent.dataset.iterate(bs, generator=agent.generator, drop_last=True)
        if agent.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            agent.train_step(next(it) if end_to_end else fixed)
        if agent.device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(steps * bs / (time.perf_counter() - t0))
    return statistics.median(rates[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per timed run")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.disable(logging.INFO)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.configs:
            folder, name, reference = CONFIGS[key]
            probe = compose(CFG_ROOT / folder, name, ["wandb=null"])
            data = Path(tmp) / f"{key}.npz"
            write_dataset(data, probe.obs_dim, probe.action_dim)
            cfg = compose(
                CFG_ROOT / folder,
                name,
                [f"device={args.device}", "wandb=null", f"train_dataset_path={data}", f"log_dir={tmp}/log"],
            )
            agent = PretrainAgent(cfg)
            agent.epoch = cfg.train.epoch_start_ema  # measure the steady state (EMA lerp, not copy)
            model_only = measure(agent, args.steps, end_to_end=False)
            e2e = measure(agent, args.steps, end_to_end=True)
            rows.append((key, cfg.train.batch_size, str(agent.device), e2e, model_only, reference))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    header = f"{'config':<8} {'batch':>5} {'device':<7} {'end-to-end/s':>13} {'model-only/s':>13} {'e2e/model':>9} "
    header += f"{'e2e vs ref':>10}"
    print(header)
    for key, bs, dev, e2e, mo, ref in rows:
        print(f"{key:<8} {bs:>5} {dev:<7} {e2e:>13,.0f} {mo:>13,.0f} {e2e / mo:>9.2f} {e2e / ref:>9.2f}x")


if __name__ == "__main__":
    main()
