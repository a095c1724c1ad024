"""Pixel pretraining throughput: samples/s end to end (gather + step + EMA) and model-only, per encoder and network.

    python script/bench/pixels.py [--device auto] [--steps 20] [--configs vit-mlp resnet-mlp] [--batch-size 256]
    python script/bench/pixels.py --sampling        # also: DDPM K=100 rollout chunks/s, encode-once vs per-step
    python script/bench/pixels.py --rollout [--n-envs 2]  # also: pixel rollout env steps/s, rendering included

Uses the real pixel configs (`cfg/robomimic/pretrain/<task>/pre_*_img`, 96x96 images, the configs' batch size 256)
and the real `PretrainAgent` on a generated dataset; the ResNet rows compose the config with `encoder=resnet`
(`cfg/common/policy/encoder_resnet_img.yaml` in place of the ViT). Numbers depend on the device: compare rows from
one machine only.

`--rollout` builds `cfg/robomimic/finetune/can/ft_ppo_diffusion_mlp_img` (96x96 eye-in-hand camera rendered
offscreen, DDIM 5 of 100 steps, ViT actor and critic) with `PPOAgent` from an untrained base checkpoint and reports
env steps/s of the wrapped vector env with random actions (rendering only) and of `PPOAgent.collect` (policy
chunks with chains + rendering + env + buffer), so the policy's share of a pixel rollout is visible.
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
from script.bench.inputs import write_demos, write_normalization  # noqa: E402
from script.bench.timing import sync  # noqa: E402

# name: (config folder, config name, `encoder=` choice or None for the config's own ViT)
CONFIGS = {
    "vit-mlp": ("robomimic/pretrain/can", "pre_diffusion_mlp_img", None),
    "resnet-mlp": ("robomimic/pretrain/can", "pre_diffusion_mlp_img", "resnet"),
    "vit-unet": ("robomimic/pretrain/can", "pre_diffusion_unet_img", None),
    "resnet-unet": ("robomimic/pretrain/can", "pre_diffusion_unet_img", "resnet"),
    "vit-transformer": ("robomimic/pretrain/can", "pre_diffusion_transformer_img", None),
    "vit-gaussian": ("robomimic/pretrain/can", "pre_gaussian_mlp_img", None),
    "vit-mlp-2cam": ("robomimic/pretrain/transport", "pre_diffusion_mlp_img", None),
    "resnet-mlp-2cam": ("robomimic/pretrain/transport", "pre_diffusion_mlp_img", "resnet"),
}
DEFAULT = ["vit-mlp", "resnet-mlp", "vit-unet", "vit-transformer", "vit-gaussian", "vit-mlp-2cam"]


def measure(agent: PretrainAgent, steps: int, end_to_end: bool, repeats: int = 3) -> float:
    """Median samples/s over ``repeats`` timed runs of ``steps`` optimizer steps (after one warm-up run)."""
    bs = agent.cfg.train.batch_size
    fixed = agent.dataset.get_batch(torch.arange(bs, device=agent.device))
    rates = []
    for _ in range(repeats + 1):
        it = agent.dataset.iterate(bs, generator=agent.generator, drop_last=True)
        sync(agent.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            agent.train_step(next(it) if end_to_end else fixed)
        sync(agent.device)
        rates.append(steps * bs / (time.perf_counter() - t0))
    return statistics.median(rates[1:])


@torch.no_grad()
def sampling_rate(agent: PretrainAgent, n_cond: int, encode_once: bool, repeats: int = 3) -> float:
    """Action chunks/s of ``model.sample`` (DDPM, K as configured) for ``n_cond`` observations in eval mode."""
    model = agent.model.eval()
    cond = agent.dataset.get_batch(torch.arange(n_cond, device=agent.device)).cond
    net = model.network
    if not encode_once:
        model.network = PerStepEncoding(net)
    rates = []
    try:
        for _ in range(repeats + 1):
            sync(agent.device)
            t0 = time.perf_counter()
            model.sample(cond)
            sync(agent.device)
            rates.append(n_cond / (time.perf_counter() - t0))
    finally:
        model.network = net
        model.train()
    return statistics.median(rates[1:])


class PerStepEncoding(torch.nn.Module):
    """Hides ``encode_cond`` so DiffusionModel passes the raw observation and every denoising step re-encodes it
    (what a denoiser without encode-once does); for the comparison column only."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, time: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net(x, time, cond)


def build(key: str, args: argparse.Namespace, tmp: str) -> PretrainAgent:
    folder, name, encoder = CONFIGS[key]
    probe = compose(CFG_ROOT / folder, name, ["wandb=null"])
    shape = tuple(int(s) for s in probe.shape_meta.obs.rgb.shape)
    data_dir = Path(tmp) / f"{probe.env}-{shape[0]}"
    data, norm = data_dir / "train.npz", data_dir / "normalization.npz"
    if not data.exists():  # enough 200-step trajectories for one timed run of distinct batches
        bs = args.batch_size or int(probe.train.batch_size)
        n_traj = max(20, -(-args.steps * bs // 190))
        write_demos(data_dir, probe.obs_dim, probe.action_dim, n_traj, 200, image_shape=shape)
    overrides = [f"device={args.device}", "wandb=null", f"train_dataset_path={data}", f"log_dir={tmp}/log"]
    overrides.append(f"normalization_path={norm}")
    if args.batch_size:
        overrides.append(f"train.batch_size={args.batch_size}")
    if encoder is not None:
        overrides.append(f"encoder={encoder}")
    cfg = compose(CFG_ROOT / folder, name, overrides)
    agent = PretrainAgent(cfg)
    agent.epoch = cfg.train.epoch_start_ema  # measure the steady state (EMA lerp, not copy)
    return agent


def rollout_rates(args: argparse.Namespace, tmp: str) -> tuple[float, float, int]:
    """(random-action env steps/s, rollout env steps/s through PPOAgent.collect, n_envs) for can from pixels."""
    from agent.finetune.ppo import PPOAgent
    from script.bench.finetune import write_base_checkpoint

    folder, name = CFG_ROOT / "robomimic/finetune/can", "ft_ppo_diffusion_mlp_img"
    base = write_base_checkpoint(Path(tmp) / "pre_img", CFG_ROOT / "robomimic/pretrain/can", "pre_diffusion_mlp_img")
    probe = compose(folder, name, ["wandb=null"])
    norm = write_normalization(Path(tmp) / "ft_img", int(probe.obs_dim), int(probe.action_dim))
    overrides = [
        f"device={args.device}",
        "wandb=null",
        f"log_dir={tmp}/log",
        f"base_policy_path={base}",
        f"normalization_path={norm}",
        f"env.n_envs={args.n_envs}",
        f"train.n_steps={args.rollout_steps}",
        "train.batch_size=64",
    ]
    agent = PPOAgent(compose(folder, name, overrides))
    env, te, da = agent.env, agent.act_steps, int(agent.cfg.action_dim)
    try:
        env.reset(seed=0)
        actions = np.random.default_rng(0).uniform(-1, 1, (args.rollout_steps, args.n_envs, te, da))
        n, t0 = 0, time.perf_counter()
        for a in actions.astype(np.float32):
            n += int(env.step(a)[4]["chunk_steps"].sum())
        raw = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        timing = agent.collect()
        rollout = timing["rollout_env_steps"] / (time.perf_counter() - t0)
    finally:
        env.close()
    return raw, rollout, args.n_envs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per timed run")
    parser.add_argument("--configs", nargs="+", default=DEFAULT, choices=list(CONFIGS))
    parser.add_argument("--batch-size", type=int, default=0, help="override train.batch_size (0 = the config's)")
    parser.add_argument("--sampling", action="store_true", help="also time DDPM sampling, encode-once vs per-step")
    parser.add_argument("--n-cond", type=int, default=50, help="observations per sampling call (env.n_envs)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--rollout", action="store_true", help="also time a pixel rollout (can, rendering included)")
    parser.add_argument("--n-envs", type=int, default=2, help="envs of the pixel rollout")
    parser.add_argument("--rollout-steps", type=int, default=10, help="chunks per env of the pixel rollout")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.disable(logging.INFO)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.configs:
            agent = build(key, args, tmp)
            n_params = sum(p.numel() for p in agent.model.parameters())
            enc_params = sum(p.numel() for p in agent.model.network.encoder.parameters())
            model_only = measure(agent, args.steps, end_to_end=False)
            e2e = measure(agent, args.steps, end_to_end=True)
            sample = None
            if args.sampling and hasattr(agent.model, "denoising_steps"):
                sample = (sampling_rate(agent, args.n_cond, True), sampling_rate(agent, args.n_cond, False))
            bs, dev = agent.cfg.train.batch_size, str(agent.device)
            rows.append((key, bs, dev, n_params, enc_params, e2e, model_only, sample))
            del agent
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        rollout = rollout_rates(args, tmp) if args.rollout else None
    name = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    print(f"torch {torch.__version__}, {name}, {torch.get_num_threads()} threads, 96x96 images, {args.steps} steps/run")
    header = f"{'config':<16} {'batch':>5} {'device':<7} {'params':>7} {'encoder':>7} {'end-to-end/s':>13}"
    header += f" {'model-only/s':>13}"
    if args.sampling:
        header += f" {'sample/s once':>14} {'per-step':>9}"
    print(header)
    for key, bs, dev, n_params, enc_params, e2e, mo, sample in rows:
        line = f"{key:<16} {bs:>5} {dev:<7} {n_params / 1e6:>6.2f}M {enc_params / 1e6:>6.2f}M"
        line += f" {e2e:>13,.0f} {mo:>13,.0f}"
        if args.sampling:
            line += f" {sample[0]:>14,.1f} {sample[1]:>9,.1f}" if sample else f" {'-':>14} {'-':>9}"
        print(line)
    if rollout is not None:
        raw, collect, n_envs = rollout
        print(f"\npixel rollout, can, {n_envs} sync envs, 96x96 eye-in-hand rendered offscreen:")
        print(f"  env steps/s, random actions (rendering + env): {raw:8.1f}")
        print(f"  env steps/s, PPOAgent.collect (+ DDIM-5 policy, ViT critic, buffer): {collect:8.1f}")


if __name__ == "__main__":
    main()
