"""Learning tests: PPO fine-tuning moves a pretrained policy toward a reward optimum away from its demonstrations.

The task is a bandit served through the real env factory (a registered test suite, the real normalisation and
multi-step wrappers): every episode is one action chunk of Te = 2 env steps, and each step pays -||a - a*||^2 with
a* = (0.5, -0.5), while the demonstrations the policy is pretrained on (with the real PretrainAgent) are centred at
the origin. The whole pipeline runs: pretrain -> base_policy_path -> PPOAgent -> checkpoints -> evaluation.

This module also provides the helpers (suite registration, demo data, configs) that the smoke tests reuse.
"""

from __future__ import annotations

import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from agent.config import CFG_ROOT, compose
from agent.logger import read_metrics
from env.registry import EnvSpec, register_suite

OBS_DIM, ACTION_DIM, TE = 2, 2, 2
TARGET = np.array([0.5, -0.5])
DEMO_STD = 0.1
BANDIT = "bandit-v0"


class BanditEnv(gym.Env):
    """Episodes of `episode_steps` env steps; reward -||a - a*||^2 per step; the state is random and irrelevant."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, episode_steps: int = TE, render_mode: str | None = None) -> None:
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(OBS_DIM,), dtype=np.float64)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(ACTION_DIM,), dtype=np.float64)
        self.episode_steps = episode_steps
        self.render_mode = render_mode
        self._t = 0
        self._state = np.zeros(OBS_DIM)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._t = 0
        self._state = self.np_random.uniform(-1, 1, OBS_DIM)
        return self._state.copy(), {}

    def step(self, action):
        self._t += 1
        reward = -float(np.sum((np.asarray(action) - TARGET) ** 2))
        return self._state.copy(), reward, self._t >= self.episode_steps, False, {"success": reward > -0.05}

    def render(self):
        frame = np.zeros((16, 16, 3), dtype=np.uint8)
        frame[: 2 * self._t] = 255
        return frame


@register_suite(
    "bandit_test", max_episode_steps={BANDIT: 100}, uses_gl=False, default_wrapper="mujoco_locomotion_lowdim"
)
def make_bandit(spec: EnvSpec) -> gym.Env:
    episode_steps = int(spec.env_kwargs.get("episode_steps", TE))
    return BanditEnv(episode_steps=episode_steps, render_mode="rgb_array" if spec.render else None)


def write_demos(data_dir: Path, n: int = 2000, seed: int = 0) -> None:
    """Demonstrations centred at the origin (far from a*), identity normalisation, under data/gym/bandit-v0/."""
    rng = np.random.default_rng(seed)
    folder = data_dir / "gym" / BANDIT
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(
        folder / "train.npz",
        states=rng.uniform(-1, 1, (n, OBS_DIM)).astype(np.float32),
        actions=(DEMO_STD * rng.standard_normal((n, ACTION_DIM))).astype(np.float32),
        traj_lengths=np.full(n // 20, 20),
    )
    ones = np.ones
    np.savez(
        folder / "normalization.npz",
        obs_min=-ones(OBS_DIM, np.float32),
        obs_max=ones(OBS_DIM, np.float32),
        action_min=-ones(ACTION_DIM, np.float32),
        action_max=ones(ACTION_DIM, np.float32),
    )


TASK = [f"env_name={BANDIT}", f"obs_dim={OBS_DIM}", f"action_dim={ACTION_DIM}", "device=cpu", "wandb=null"]
DIFFUSION_NET = ["denoising_steps=10", "model.network.mlp_dims=[64,64,64]", "model.network.time_dim=8"]
GAUSSIAN_NET = ["model.network.mlp_dims=[64,64]", "model.network.residual_style=false"]
FLOW_NET = ["denoising_steps=2", "model.network.mlp_dims=[64,64,64]", "model.network.time_dim=8"]
NETS = {"diffusion": DIFFUSION_NET, "gaussian": GAUSSIAN_NET, "reflow": FLOW_NET, "shortcut": FLOW_NET}


def pretrain(policy: str, epochs: int = 20, extra: list[str] = ()) -> Path:
    """Pretrain on the demos with the real PretrainAgent and gym config; returns the run folder."""
    from agent.pretrain import PretrainAgent

    name, net = f"pre_{policy}_mlp", NETS[policy]
    cfg = compose(
        CFG_ROOT / "gym/pretrain/hopper-medium-v2",
        name,
        [
            *TASK,
            *net,
            f"horizon_steps={TE}",
            f"train.n_epochs={epochs}",
            "train.lr_scheduler.warmup_steps=0",
            "train.learning_rate=1e-3",
            "train.lr_scheduler.min_lr=1e-3",
            "train.epoch_start_ema=100000",  # the EMA copy follows the weights (few epochs here)
            "train.update_ema_freq=1",
            *extra,
        ],
    )
    agent = PretrainAgent(cfg)
    agent.run()
    return agent.logdir


def finetune_overrides(policy: str, base: Path, n_itr: int, extra: list[str] = ()) -> list[str]:
    """Overrides that turn a real fine-tuning config into a small bandit run."""
    common = [
        *TASK,
        f"base_policy_path={base}",
        f"horizon_steps={TE}",
        f"act_steps={TE}",
        "env.n_envs=16",
        f"env.max_episode_steps={TE}",
        "env.reset_at_iteration=true",
        "env.best_reward_threshold_for_success=null",
        "model.critic.mlp_dims=[32,32,32]",
        f"train.n_train_itr={n_itr}",
        "train.n_steps=8",
        "train.val_freq=1000",
        "train.save_model_freq=1000",
        "train.update_epochs=5",
        "train.critic_lr=1e-2",
        "train.critic_lr_scheduler.min_lr=1e-2",
        "train.reward_scale_running=false",
        "train.gamma=0.99",
    ]
    if policy in ("reflow", "shortcut"):  # two noisy Euler steps, both fine-tuned
        return [
            *common,
            *FLOW_NET,
            "train.batch_size=256",
            "train.actor_lr=1e-3",
            "train.actor_lr_scheduler.min_lr=1e-3",
            "train.ent_coef=0",
            "model.clip_ploss_coef=0.1",
            "model.clip_ploss_coef_base=0.1",
            "model.gamma_denoising=0.9",
            *extra,
        ]
    if policy == "diffusion":
        return [
            *common,
            *DIFFUSION_NET,
            "ft_denoising_steps=5",
            "train.batch_size=256",
            "train.actor_lr=1e-3",
            "train.actor_lr_scheduler.min_lr=1e-3",
            "model.clip_ploss_coef=0.1",
            "model.clip_ploss_coef_base=0.1",
            "model.gamma_denoising=0.9",
            *extra,
        ]
    return [
        *common,
        *GAUSSIAN_NET,
        "model.network.fixed_std=0.1",
        "model.network.std_max=0.3",
        "train.batch_size=32",
        "train.actor_lr=1e-3",
        "train.actor_lr_scheduler.min_lr=1e-3",
        "model.clip_ploss_coef=0.2",
        *extra,
    ]


def finetune_config(policy: str, base: Path, n_itr: int, extra: list[str] = ()):
    if policy != "gaussian":
        folder, name = CFG_ROOT / "gym/finetune/hopper-v2", f"ft_ppo_{policy}_mlp"
    else:  # the gym Gaussian fine-tuning config is the scratch one (DPPO has no gym Gaussian fine-tuning)
        folder, name = CFG_ROOT / "gym/scratch/hopper-v2", "ppo_gaussian_mlp"
    return compose(folder, name, finetune_overrides(policy, base, n_itr, extra))


def mean_reward(rows: list[dict], first: bool) -> float:
    """The first iteration's mean chunk reward (its rollout precedes every update), or the last three's mean."""
    rewards = [r["train/reward_mean"] for r in rows if "train/reward_mean" in r]
    part = rewards[:1] if first else rewards[-3:]
    return float(np.mean(part))


@pytest.mark.parametrize("policy", ["diffusion", "gaussian", "reflow", "shortcut"])
def test_ppo_moves_policy_to_the_reward_optimum(policy: str, tmp_dirs: Path):
    """Within 20 iterations (about 10 s of CPU) the mean chunk reward rises from about -1.04 (the demonstrations)
    above -0.2, i.e. the sampled actions move most of the way to a* (seen: about -0.05 after 8 iterations)."""
    from agent.finetune.ppo import PPOAgent

    torch.manual_seed(0)
    write_demos(tmp_dirs / "data")
    base = pretrain(policy)
    start = time.perf_counter()
    agent = PPOAgent(finetune_config(policy, base, n_itr=20))
    agent.run()
    elapsed = time.perf_counter() - start
    rows = read_metrics(agent.logdir)
    before, after = mean_reward(rows, first=True), mean_reward(rows, first=False)
    # Chunk reward = -sum over 2 steps of ||a - a*||^2: the demonstrations (origin) give about -1.04.
    assert before < -0.8, f"pretrained policy should start near the demonstrations, got {before:.3f}"
    assert after > -0.2, f"{policy}: mean chunk reward {before:.3f} -> {after:.3f}, expected > -0.2"
    # The deterministic evaluations (before the first and after the last iteration) tell the same story.
    evals = [r["eval/episode_return"] for r in rows if "eval/episode_return" in r]
    assert len(evals) == 2 and evals[0] < -0.8 and evals[1] > -0.2, evals
    assert elapsed < 90, f"fine-tuning took {elapsed:.0f} s"


def test_flow_ppo_learns_only_through_its_update(tmp_dirs: Path):
    """The reflow policy's rise comes from PPO's update: with the actor's learning rate at 0 (the critic still
    learns) the same run stays at the demonstrations' reward."""
    from agent.finetune.ppo import PPOAgent

    torch.manual_seed(0)
    write_demos(tmp_dirs / "data")
    base = pretrain("reflow")
    frozen = ["train.actor_lr=0", "train.actor_lr_scheduler.min_lr=0"]
    agent = PPOAgent(finetune_config("reflow", base, n_itr=10, extra=frozen))
    agent.run()
    rows = read_metrics(agent.logdir)
    before, after = mean_reward(rows, first=True), mean_reward(rows, first=False)
    assert before < -0.8 and after < -0.8, f"no update, yet the reward moved: {before:.3f} -> {after:.3f}"
