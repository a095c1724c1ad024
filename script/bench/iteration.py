"""One paper-size DPPO hopper iteration, timed with its parts: rollout (and the time it waited for the envs), update.

    python script/bench/iteration.py [--device cuda] [--iterations 2] [--n-steps 500] [KEY=VALUE ...]

The real `cfg/gym/finetune/hopper-v2/ft_ppo_diffusion_mlp` config, `PPOAgent` and hopper env (40 envs x 500 chunks
= 80k env steps, K = 20, K' = 10, 5 epochs of 4 x 50k-row minibatches, no KL stop) from an untrained base checkpoint
(`script/bench/finetune.py`'s: throughput does not depend on the weights). Runs `--iterations` training iterations
back to back (the first one also pays the CUDA context, kernel and env-worker start-up) and prints one
`iteration ...` line of `key=value` figures per iteration. Config overrides (e.g. `+env.workers=auto`) go last.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from agent.config import compose  # noqa: E402
from script.bench.finetune import FT_DIR, FT_NAME, write_base_checkpoint  # noqa: E402
from script.bench.inputs import write_normalization  # noqa: E402
from script.bench.timing import sync  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--iterations", type=int, default=2, help="training iterations, timed one by one")
    parser.add_argument("--n-steps", type=int, default=500, help="chunks per env per iteration (paper: 500)")
    parser.add_argument("--batch", type=int, default=50000, help="rows per PPO minibatch (paper: 50,000)")
    parser.add_argument("overrides", nargs="*", help="config overrides KEY=VALUE, e.g. +env.workers=auto")
    args = parser.parse_args()
    if args.iterations < 1 or args.n_steps < 1 or args.batch < 1:
        parser.error("--iterations, --n-steps and --batch must be >= 1")
    logging.disable(logging.INFO)
    from agent.finetune.ppo import PPOAgent

    with tempfile.TemporaryDirectory() as tmp:
        overrides = [
            f"device={args.device}",
            "wandb=null",
            f"log_dir={tmp}/log",
            f"base_policy_path={write_base_checkpoint(Path(tmp) / 'pre')}",
            f"normalization_path={write_normalization(Path(tmp) / 'data', 11, 3)}",
            f"train.n_steps={args.n_steps}",
            f"train.batch_size={args.batch}",
            "train.target_kl=null",
            *args.overrides,
        ]
        agent = PPOAgent(compose(FT_DIR, FT_NAME, overrides))
        label = " ".join(args.overrides) or "config"
        try:
            for i in range(args.iterations):
                sync(agent.device)
                start = time.perf_counter()
                m = agent.train_iteration()
                sync(agent.device)
                total = time.perf_counter() - start
                print(
                    f"iteration {i + 1} [{label}] device={agent.device} n_steps={args.n_steps} batch={args.batch} "
                    f"total_s={total:.2f} "
                    f"rollout_s={m['rollout_s']:.2f} env_wait_s={m['env_s']:.2f} update_s={m['update_s']:.2f} "
                    f"rest_s={total - m['rollout_s'] - m['update_s']:.2f} "
                    f"env_steps_per_s={m['rollout_env_steps_per_s']:.0f} minibatches={m['n_minibatches']}",
                    flush=True,
                )
        finally:
            agent.env.close()


if __name__ == "__main__":
    main()
