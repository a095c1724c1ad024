"""The quick start: a whole pipeline on data the toolkit makes itself, in a few minutes on 2 CPU cores.

    make quickstart            # or: python script/quickstart.py [--fast] [--no-flow]

1. generate scripted multi-route demonstrations for the Avoid task (`script/dataset/generate_avoid.py`),
2. pretrain a diffusion policy on them by behaviour cloning (`cfg/d3il/pretrain/avoid_m2/pre_diffusion_mlp_cpu`,
   the CPU preset of DPPO's config),
3. fine-tune it with DPPO (`cfg/d3il/finetune/avoid_m2/ft_ppo_diffusion_mlp_cpu`),
4. evaluate the pretrained and the fine-tuned checkpoints (`cfg/d3il/eval/avoid_m2/eval_diffusion_mlp`),
5. the same for a rectified-flow policy (`pre_reflow_mlp_cpu`, PPO over 4 noisy Euler steps with
   `ft_ppo_reflow_mlp_cpu`, `eval_reflow_mlp`; skipped with `--no-flow`),

then print every policy's success rate and return side by side and draw the fine-tuning learning curves into
`log/quickstart/curves.png`. Every step is the documented command line (`script/run.py ...`), so the commands
printed here are the ones to adapt for other tasks.
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

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parent.parent
TASK = "avoid_m2"


def sh(args: list[str], env: dict[str, str]) -> None:
    """Run one pipeline step, echoing the command; stop the quick start if it fails."""
    print(f"\n$ {shlex.join(args)}", flush=True)
    done = subprocess.run(args, cwd=REPO, env=env)
    if done.returncode != 0:
        sys.exit(f"quick start: step failed with exit code {done.returncode}: {shlex.join(args)}")


def pipeline(
    out: Path, family: str, method: str, epochs: int, itrs: int, common: list[str], env: dict[str, str]
) -> dict[str, dict]:
    """Pretrain a `family` policy (`diffusion` or `reflow`), fine-tune it with `method`, evaluate both checkpoints.

    Returns:
        "<family> pretrained" and "<family> fine-tuned (<method>)" -> the evaluation's eval_result.json.
    """
    py, folder = sys.executable, out / family
    sh(
        [
            py,
            "script/run.py",
            f"--config-name=pre_{family}_mlp_cpu",
            f"--config-dir=cfg/d3il/pretrain/{TASK}",
            *common,
            f"logdir={folder}/pretrain",
            f"train.n_epochs={epochs}",
            f"train.save_model_freq={epochs}",
            f"train.lr_scheduler.first_cycle_steps={epochs}",
        ],
        env,
    )
    pre_ckpt = folder / "pretrain" / "checkpoint" / f"state_{epochs}.pt"
    sh(
        [
            py,
            "script/run.py",
            f"--config-name=ft_ppo_{family}_mlp_cpu",
            f"--config-dir=cfg/d3il/finetune/{TASK}",
            *common,
            f"logdir={folder}/finetune",
            f"base_policy_path={pre_ckpt}",
            f"train.n_train_itr={itrs}",
            f"train.save_model_freq={itrs}",
        ],
        env,
    )
    ft_ckpt = folder / "finetune" / "checkpoint" / f"state_{itrs}.pt"
    k_ft = OmegaConf.load(folder / "finetune" / "config.yaml").ft_denoising_steps  # as the run was fine-tuned
    results = {}
    for label, name, ckpt, steps in (
        (f"{family} pretrained", "pretrained", pre_ckpt, 0),
        (f"{family} fine-tuned ({method})", "finetuned", ft_ckpt, k_ft),
    ):
        eval_dir = folder / f"eval_{name}"
        sh(
            [
                py,
                "script/run.py",
                f"--config-name=eval_{family}_mlp",
                f"--config-dir=cfg/d3il/eval/{TASK}",
                *common,
                f"logdir={eval_dir}",
                f"base_policy_path={ckpt}",
                f"ft_denoising_steps={steps}",
                "env.n_envs=50",
                "n_episodes=200",
            ],
            env,
        )
        results[label] = json.loads((eval_dir / "eval_result.json").read_text())
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a much shorter run (for smoke tests)")
    parser.add_argument("--out", type=Path, default=REPO / "log" / "quickstart")
    parser.add_argument("--no-flow", action="store_true", help="only the diffusion policy (skip the flow policy)")
    args = parser.parse_args()
    epochs, itrs, n_demos = (2, 2, 20) if args.fast else (100, 30, 200)
    out = args.out.resolve()
    data = out / "data"
    env = {**os.environ, "DPPO_DATA_DIR": str(data), "DPPO_LOG_DIR": str(out), "WANDB_MODE": "disabled"}
    py = sys.executable
    common = ["device=cpu", "wandb=null"]
    start = time.perf_counter()

    sh([py, "script/dataset/generate_avoid.py", "--variants", TASK.split("_")[1], "--num-episodes", str(n_demos)], env)
    families = [("diffusion", "DPPO")] + ([] if args.no_flow else [("reflow", "ReFlow PPO")])
    results: dict[str, dict] = {}
    for family, method in families:
        results.update(pipeline(out, family, method, epochs, itrs, common, env))
    runs = [str(out / family / "finetune") for family, _ in families]
    curves = out / "curves.png"
    sh([py, "script/plot/plot_runs.py", *runs, "--metric", "train/success_rate", "--out", str(curves)], env)

    print(f"\nQuick start on {TASK} finished in {(time.perf_counter() - start) / 60:.1f} min\n")
    print(f"{'policy':<32} {'success rate':>12} {'mean return':>12} {'episodes':>9}")
    for label, r in results.items():
        print(f"{label:<32} {r['success_rate']:>12.3f} {r['episode_return']:>12.3f} {r['n_episodes']:>9}")
    print(f"\nlearning curves: {curves}; runs under {out}")


if __name__ == "__main__":
    main()
