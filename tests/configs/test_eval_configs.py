"""Every evaluation config composes, matches its pretraining config, and evaluates a generated pretraining checkpoint
on CPU (a few chunks in two envs). Suites whose extra is not installed are skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from agent.config import CFG_ROOT, compose
from agent.finetune.loading import TUNABLE_NETWORK_KEYS
from tests.configs.test_finetune_configs import (
    params,
    pixel_overrides,
    pretrain_config_of,
    skip_unless_suite_available,
    write_pretrain_checkpoint,
)

EVAL_CONFIGS = sorted(CFG_ROOT.glob("*/eval/*/*.yaml"))


def test_every_dppo_eval_config_exists():
    names = {(p.parts[-4], p.parent.name, p.stem) for p in EVAL_CONFIGS}
    for robot in ("hopper", "walker2d", "halfcheetah"):
        assert {("gym", f"{robot}-v2", "eval_diffusion_mlp"), ("gym", f"{robot}-v2", "eval_gaussian_mlp")} <= names
    for task in ("lift", "can", "square", "transport"):
        for p in ("diffusion_mlp", "diffusion_unet", "gaussian_mlp"):
            assert ("robomimic", task, f"eval_{p}") in names
            assert ("robomimic", task, f"eval_{p}_img") in names
    assert ("d3il", "avoid_m1", "eval_diffusion_mlp") in names


@pytest.mark.parametrize("path", params(EVAL_CONFIGS, runs_env=False))
def test_eval_config_matches_its_pretraining_config(path: Path, tmp_dirs: Path):
    cfg = compose(path.parent, path.stem, ["wandb=null"])
    OmegaConf.resolve(cfg)
    assert cfg._target_ == "agent.eval.EvalAgent" and cfg.get("ft_denoising_steps", 0) == 0
    pre = pretrain_config_of(cfg)
    OmegaConf.resolve(pre)
    assert Path(cfg.base_policy_path).name == pre.name and cfg.normalization_path == pre.normalization_path
    for key in ("obs_dim", "action_dim", "horizon_steps", "cond_steps"):
        assert cfg[key] == pre[key], key
    assert cfg.model._target_ == pre.model._target_
    for key, value in pre.model.network.items():
        if key not in TUNABLE_NETWORK_KEYS:
            assert cfg.model.network.get(key) == value, f"model.network.{key}"


@pytest.mark.parametrize("path", params(EVAL_CONFIGS))
def test_eval_config_evaluates_a_pretraining_checkpoint(path: Path, tmp_dirs: Path):
    from agent.eval import EvalAgent

    probe = compose(path.parent, path.stem, ["wandb=null"])
    skip_unless_suite_available(probe.env_name)
    pixels = pixel_overrides(probe)
    pre = pretrain_config_of(probe, pixels)
    ckpt = write_pretrain_checkpoint(tmp_dirs / "pre" / "checkpoint" / "state_1.pt", pre)
    overrides = ["device=cpu", "wandb=null", "env.n_envs=2", "n_episodes=null", "n_steps=3", f"base_policy_path={ckpt}"]
    overrides += pixels
    agent = EvalAgent(compose(path.parent, path.stem, overrides))
    result = agent.run()
    written = json.loads((agent.logdir / "eval_result.json").read_text())
    assert written["checkpoint_kind"] == "pretrain" and written["env_steps"] == result["env_steps"]
    assert 0 < written["env_steps"] <= 2 * 3 * probe.act_steps
