"""Every PPO fine-tuning (and scratch) config composes, matches its pretraining config, validates, and runs two tiny
iterations on CPU from a generated pretraining checkpoint. Suites whose extra is not installed are skipped."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from agent.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from agent.config import CFG_ROOT, compose, instantiate
from agent.finetune.loading import ARCHITECTURE_KEYS, TUNABLE_NETWORK_KEYS
from agent.logger import read_metrics

# PPO configs (the baselines' configs in the same folders have their own tests).
FT_CONFIGS = sorted([*CFG_ROOT.glob("*/finetune/*/ft_ppo_*.yaml"), *CFG_ROOT.glob("*/scratch/*/ppo_*.yaml")])
SLOW_SUITES = {"robomimic"}  # robosuite envs take seconds to build: run with -m slow
TINY = [
    "device=cpu",
    "wandb=null",
    "env.n_envs=2",
    "train.n_steps=4",
    "train.n_train_itr=2",
    "train.batch_size=8",
    "train.logprob_batch_size=5",
    "train.val_freq=1",
    "train.eval_n_episodes=null",  # evaluations of 3 chunks (one full episode per env can take 250)
    "train.eval_n_steps=3",
    "train.save_model_freq=100",
    "train.n_critic_warmup_itr=1",  # iteration 1 trains the critic only, iteration 2 both
]


def config_id(path: Path) -> str:
    return f"{path.parts[-4]}/{path.parts[-3]}/{path.parent.name}/{path.stem}"


def params(paths: list[Path], runs_env: bool = True) -> list:
    """pytest params named by config; runs on slow suites are marked slow (config checks are not)."""
    out = []
    for p in paths:
        marks = [pytest.mark.slow] if runs_env and p.parts[-4] in SLOW_SUITES else []
        out.append(pytest.param(p, id=config_id(p), marks=marks))
    return out


TINY_IMAGE = 24  # pixel configs run on (3 * cameras, 24, 24) images: rendered by the env, encoded by a small ViT


def pixel_overrides(cfg: DictConfig) -> list[str]:
    """For a pixel config: shape_meta.obs.rgb.shape = [C, 24, 24] (the env renders and the encoders expect that
    size; the pretraining config gets it too so the checkpoint fits), else nothing."""
    shape = OmegaConf.select(cfg, "shape_meta.obs.rgb.shape", default=None)
    if shape is None:
        return []
    return [f"shape_meta.obs.rgb.shape=[{int(shape[0])},{TINY_IMAGE},{TINY_IMAGE}]"]


def pretrain_config_of(cfg: DictConfig, overrides: list[str] | None = None) -> DictConfig:
    """The pretraining config whose run this config starts from: the one in cfg/<suite>/pretrain/<task>/ named
    pre_<policy>[<variant>] (e.g. pre_diffusion_mlp_ta1_ph) whose run name is this config's `pretrain_name`."""
    folder = CFG_ROOT / cfg.suite / "pretrain" / cfg.env_name
    base = folder / f"pre_{cfg.policy_name}.yaml"
    assert base.is_file(), f"no pretraining config pre_{cfg.policy_name} in {folder}"
    want = OmegaConf.select(cfg, "pretrain_name", default=None)
    for path in [base, *sorted(folder.glob(f"pre_{cfg.policy_name}_*.yaml"))]:
        pre = compose(folder, path.stem, ["wandb=null", *(overrides or [])])
        if want is None or pre.name == want:
            return pre
    raise AssertionError(f"no pretraining config in {folder} names its run {want}")


def identity_normalization(obs_dim: int, action_dim: int) -> dict[str, np.ndarray]:
    ones = np.ones
    return {
        "obs_min": -ones(obs_dim, np.float32),
        "obs_max": ones(obs_dim, np.float32),
        "action_min": -ones(action_dim, np.float32),
        "action_max": ones(action_dim, np.float32),
    }


def write_normalization(path: Path, obs_dim: int, action_dim: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **identity_normalization(obs_dim, action_dim))


def write_pretrain_checkpoint(path: Path, pre_cfg: DictConfig, seed: int = 0) -> Path:
    """A checkpoint as PretrainAgent writes it, with freshly initialised weights (EMA = model). It carries
    normalization statistics and no normalization.npz is written, so the loop's fallback to them is exercised."""
    torch.manual_seed(seed)
    OmegaConf.resolve(pre_cfg)
    sd = instantiate(pre_cfg.model, "model").state_dict()
    payload = {"kind": "pretrain", "epoch": 1, "model": sd, "ema": sd, "config": OmegaConf.to_container(pre_cfg)}
    payload["normalization"] = identity_normalization(int(pre_cfg.obs_dim), int(pre_cfg.action_dim))
    return save_checkpoint(path, payload)


def skip_unless_suite_available(env_name: str) -> None:
    from env.registry import MissingDependencyError, resolve_env_name

    name, suite = resolve_env_name(env_name)
    try:
        suite.check_available(name)
    except MissingDependencyError as exc:
        pytest.skip(str(exc))


def test_every_dppo_finetune_config_exists():
    names = {(p.parts[-4], p.parts[-3], p.parent.name, p.stem) for p in FT_CONFIGS}
    for robot in ("hopper", "walker2d", "halfcheetah"):
        assert ("gym", "finetune", f"{robot}-v2", "ft_ppo_diffusion_mlp") in names
        assert ("gym", "finetune", f"{robot}-v2", "ft_ppo_gaussian_mlp") in names  # the Gaussian-PPO baseline
        for p in ("diffusion_mlp", "gaussian_mlp"):
            assert ("gym", "scratch", f"{robot}-v2", f"ppo_{p}") in names
    for kind in ("complete", "partial", "mixed"):
        assert ("gym", "finetune", f"kitchen-{kind}-v0", "ft_ppo_diffusion_mlp") in names
    for task in ("lift", "can", "square", "transport"):
        for p in (
            "diffusion_mlp",
            "diffusion_unet",
            "gaussian_mlp",
            "gaussian_transformer",
            "gmm_mlp",
            "gmm_transformer",
        ):
            assert ("robomimic", "finetune", task, f"ft_ppo_{p}") in names
        for p in ("diffusion_mlp", "diffusion_unet", "gaussian_mlp"):
            assert ("robomimic", "finetune", task, f"ft_ppo_{p}_img") in names
    for task in ("can", "square"):
        for p in ("diffusion_transformer", "diffusion_transformer_img"):
            assert ("robomimic", "finetune", task, f"ft_ppo_{p}") in names
    for m in (1, 2, 3):
        for p in ("diffusion", "gaussian", "gmm"):
            assert ("d3il", "finetune", f"avoid_m{m}", f"ft_ppo_{p}_mlp") in names


ENV_CONFIGS = sorted({*CFG_ROOT.glob("*/finetune/*/ft_*.yaml"), *CFG_ROOT.glob("*/eval/*/*.yaml"), *FT_CONFIGS})


@pytest.mark.parametrize("path", params(ENV_CONFIGS, runs_env=False))
def test_success_rate_only_where_the_task_has_success(path: Path):
    """Locomotion has returns and no success: no threshold (DPPO's 3 meant "some chunk reached reward 3 per step")
    and no success flag, so no success_rate is logged; every other task has one or the other."""
    from agent.rollout import env_reports_success

    cfg = compose(path.parent, path.stem, ["wandb=null"])
    threshold = cfg.env.best_reward_threshold_for_success
    if cfg.env_name.split("-")[0] in ("hopper", "walker2d", "halfcheetah"):
        assert threshold is None and not env_reports_success(cfg.env.name)
    else:
        assert threshold is not None or env_reports_success(cfg.env.name)


@pytest.mark.parametrize("robot", ["hopper", "walker2d", "halfcheetah"])
def test_gym_gaussian_ppo_has_dppos_env_step_budget(robot: str):
    """The Gaussian-PPO baseline acts one env step per query (as pretrained) where DPPO executes chunks of 4: it
    runs 4x the iterations, and trains, evaluates and saves at the same env steps as DPPO."""
    folder = CFG_ROOT / "gym/finetune" / f"{robot}-v2"
    gauss, dppo = (compose(folder, name, ["wandb=null"]) for name in ("ft_ppo_gaussian_mlp", "ft_ppo_diffusion_mlp"))
    assert gauss.horizon_steps == gauss.act_steps == 1 and dppo.act_steps == 4

    def env_steps(cfg: DictConfig, itr: int) -> int:
        return itr * cfg.train.n_steps * cfg.act_steps * cfg.env.n_envs

    assert gauss.env.n_envs == dppo.env.n_envs == 40 and gauss.train.n_steps == dppo.train.n_steps == 500
    assert env_steps(gauss, gauss.train.n_train_itr) == env_steps(dppo, dppo.train.n_train_itr) == 80_000_000
    assert env_steps(gauss, gauss.train.val_freq) == env_steps(dppo, dppo.train.val_freq)
    assert env_steps(gauss, gauss.train.save_model_freq) == env_steps(dppo, dppo.train.save_model_freq)
    assert gauss.train.batch_size * 4 == gauss.train.n_steps * gauss.env.n_envs  # 4 minibatches per epoch
    assert gauss.train.gamma == dppo.train.gamma and gauss.train.update_epochs == dppo.train.update_epochs
    assert gauss.model.network.std_max == 0.2 and gauss.train.actor_lr == 1e-4


@pytest.mark.parametrize("path", params(FT_CONFIGS, runs_env=False))
def test_finetune_config_matches_its_pretraining_config(path: Path, tmp_dirs: Path):
    cfg = compose(path.parent, path.stem, ["wandb=null"])
    OmegaConf.resolve(cfg)
    assert cfg._target_ == "agent.finetune.ppo.PPOAgent"
    assert cfg.act_steps <= cfg.horizon_steps and cfg.env.name == cfg.env_name
    if cfg.base_policy_path is None:  # scratch
        assert path.parts[-3] == "scratch"
        return
    pre = pretrain_config_of(cfg)
    OmegaConf.resolve(pre)
    assert Path(cfg.base_policy_path).name == pre.name, "default base_policy_path must be the pretraining run folder"
    assert cfg.normalization_path == pre.normalization_path
    keys = [k for k in ARCHITECTURE_KEYS if k in pre and (k != "denoising_steps" or "denoising_steps" in cfg.model)]
    for key in keys:
        assert cfg[key] == pre[key], key
    assert issubclass(get_class(cfg.model._target_), get_class(pre.model._target_))  # ExactDiffusion: a DiffusionModel
    for key, value in pre.model.network.items():
        if key not in TUNABLE_NETWORK_KEYS:
            assert cfg.model.network.get(key) == value, f"model.network.{key}"


@pytest.mark.parametrize("path", params(FT_CONFIGS))
def test_finetune_config_runs_two_iterations(path: Path, tmp_dirs: Path):
    from agent.finetune.ppo import PPOAgent

    probe = compose(path.parent, path.stem, ["wandb=null"])
    skip_unless_suite_available(probe.env_name)
    pixels = pixel_overrides(probe)
    overrides = [*TINY, *pixels]
    if probe.base_policy_path is None:  # from scratch: the env still normalises with the dataset's statistics
        write_normalization(Path(probe.normalization_path), probe.obs_dim, probe.action_dim)
    else:
        pre = pretrain_config_of(probe, pixels)
        ckpt = write_pretrain_checkpoint(tmp_dirs / "pre" / "checkpoint" / "state_1.pt", pre)
        overrides.append(f"base_policy_path={ckpt.parent.parent}")
    start = time.perf_counter()
    agent = PPOAgent(compose(path.parent, path.stem, overrides))
    agent.run()
    elapsed = time.perf_counter() - start
    rows = read_metrics(agent.logdir)
    train = [r for r in rows if "train/reward_mean" in r]
    assert [r["step"] for r in train] == [1, 2]
    assert "train/pg_loss" not in train[0]
    for r, keys in zip(train, [("train/v_loss",), ("train/v_loss", "train/pg_loss", "train/approx_kl")]):
        for key in keys:
            assert r[key] is not None and math.isfinite(r[key]), (key, r)
    if not probe.train.force_train:
        assert [r["step"] for r in rows if "eval/n_episodes" in r] == [0, 1, 2]
    saved = load_checkpoint(latest_checkpoint(agent.logdir))
    assert saved["itr"] == 2 and saved["kind"] == "finetune"
    print(f"{config_id(path)}: {elapsed:.1f} s")
