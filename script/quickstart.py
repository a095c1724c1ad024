"""The quick start: a whole pipeline on data the toolkit makes itself, in about 15 minutes on 2 CPU cores.

    make quickstart            # or: python script/quickstart.py [--fast]

1. generate scripted multi-route demonstrations for the Avoid task (`script/dataset/generate_avoid.py`),
2. pretrain a diffusion policy on them by behaviour cloning (`cfg/d3il/pretrain/avoid_m2/pre_diffusion_mlp_cpu`,
   the CPU preset of DPPO's config),
3. fine-tune it with DPPO (`cfg/d3il/finetune/avoid_m2/ft_ppo_diffusion_mlp_cpu`),
4. evaluate the pretrained and the fine-tuned checkpoints (`cfg/d3il/eval/avoid_m2/eval_diffusion_mlp`),

then print both policies' success rate and return side by side and draw the fine-tuning learning curve into
`log/quickstart/finetune/curves.png`. Every step is the documented command line (`script/run.py ...`), so the
commands printed here are the ones to adapt for other tasks.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TASK = "avoid_m2"


def sh(args: list[str], env: dict[str, str]) -> None:
    """Run one pipeline step, echoing the command; stop the quick start if it fails."""
    print(f"\n$ {shlex.join(args)}", flush=True)
    done = subprocess.run(args, cwd=REPO, env=env)
    if done.returncode != 0:
        sys.exit(f"quick start: step failed with exit code {done.returncode}: {shlex.join(args)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a much shorter run (for smoke tests)")
    parser.add_argument("--out", type=Path, default=REPO / "log" / "quickstart")
    args = parser.parse_args()
    epochs, itrs, n_demos = (2, 2, 20) if args.fast else (100, 30, 200)
    out = args.out.resolve()
    data = out / "data"
    env = {**os.environ, "DPPO_DATA_DIR": str(data), "DPPO_LOG_DIR": str(out), "WANDB_MODE": "disabled"}
    py = sys.executable
    common = ["device=cpu", "wandb=null"]
    start = time.perf_counter()

    sh([py, "script/dataset/generate_avoid.py", "--variants", TASK.split("_")[1], "--num-episodes", str(n_demos)], env)
    sh(
        [
            py,
            "script/run.py",
            "--config-name=pre_diffusion_mlp_cpu",
            f"--config-dir=cfg/d3il/pretrain/{TASK}",
            *common,
            f"logdir={out}/pretrain",
            f"train.n_epochs={epochs}",
            f"train.save_model_freq={epochs}",
            f"train.lr_scheduler.first_cycle_steps={epochs}",
        ],
        env,
    )
    pre_ckpt = out / "pretrain" / "checkpoint" / f"state_{epochs}.pt"
    sh(
        [
            py,
            "script/run.py",
            "--config-name=ft_ppo_diffusion_mlp_cpu",
            f"--config-dir=cfg/d3il/finetune/{TASK}",
            *common,
            f"logdir={out}/finetune",
            f"base_policy_path={pre_ckpt}",
            f"train.n_train_itr={itrs}",
            f"train.save_model_freq={itrs}",
        ],
        env,
    )
    ft_ckpt = out / "finetune" / "checkpoint" / f"state_{itrs}.pt"
    results = {}
    for label, ckpt, k_ft in (("pretrained", pre_ckpt, 0), ("fine-tuned", ft_ckpt, 10)):
        folder = out / f"eval_{label}"
        sh(
            [
                py,
                "script/run.py",
                "--config-name=eval_diffusion_mlp",
                f"--config-dir=cfg/d3il/eval/{TASK}",
                *common,
                f"logdir={folder}",
                f"base_policy_path={ckpt}",
                f"ft_denoising_steps={k_ft}",
                "env.n_envs=50",
                "n_episodes=200",
            ],
            env,
        )
        results[label] = json.loads((folder / "eval_result.json").read_text())
    sh(
        [
            py,
            "script/plot/plot_runs.py",
            str(out / "finetune"),
            "--metric",
            "train/success_rate",
            "--out",
            str(out / "finetune" / "curves.png"),
        ],
        env,
    )

    print(f"\nQuick start on {TASK} finished in {(time.perf_counter() - start) / 60:.1f} min\n")
    print(f"{'policy':<12} {'success rate':>12} {'mean return':>12} {'episodes':>9}")
    for label, r in results.items():
        print(f"{label:<12} {r['success_rate']:>12.3f} {r['episode_return']:>12.3f} {r['n_episodes']:>9}")
    print(f"\nlearning curve: {out / 'finetune' / 'curves.png'}; runs under {out}")


if __name__ == "__main__":
    main()
