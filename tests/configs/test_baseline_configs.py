"""Every diffusion-baseline config (DQL, QSM, DIPO, IDQL, RWR, AWR) exists under DPPO's name and carries DPPO's
values; every one of them and every flow Q-learning config (FQL, not in DPPO) matches its pretraining config,
rejects impossible settings with one clear line, and runs two tiny iterations on CPU from a generated pretraining
checkpoint (robomimic: slow, robosuite envs take seconds to build). Suites whose extra is not installed are
skipped."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from agent.checkpoint import latest_checkpoint, load_checkpoint
from agent.config import CFG_ROOT, compose
from agent.errors import ConfigError
from agent.finetune.loading import ARCHITECTURE_KEYS, TUNABLE_NETWORK_KEYS
from agent.logger import read_metrics
from tests.configs.test_finetune_configs import (
    pretrain_config_of,
    skip_unless_suite_available,
    write_normalization,
    write_pretrain_checkpoint,
)

ALGOS = ("dql", "qsm", "dipo", "idql", "rwr", "awr")
GYM_TASKS = ("hopper-v2", "walker2d-v2", "halfcheetah-v2")
ROBOMIMIC_TASKS = ("lift", "can", "square", "transport")
CONFIGS = [CFG_ROOT / "gym/finetune" / t / f"ft_{a}_diffusion_mlp.yaml" for t in GYM_TASKS for a in ALGOS] + [
    CFG_ROOT / "robomimic/finetune" / t / f"ft_{a}_diffusion_mlp.yaml" for t in ROBOMIMIC_TASKS for a in ALGOS
]
# the baselines from scratch (DPPO's gym/scratch/hopper-v2 files: no pretrained policy)
CONFIGS += [CFG_ROOT / "gym/scratch/hopper-v2" / f"{a}_diffusion_mlp.yaml" for a in ALGOS]
# SAC on a Gaussian policy from scratch (DPPO's gym/scratch/halfcheetah-v2/sac_mlp)
CONFIGS += [CFG_ROOT / "gym/scratch/halfcheetah-v2/sac_mlp.yaml"]
# RLPD (DPPO's gym/scratch rlpd_mlp files)
CONFIGS += sorted(CFG_ROOT.glob("gym/scratch/*/rlpd_mlp.yaml")) + sorted(
    CFG_ROOT.glob("robomimic/scratch/*/rlpd_mlp*.yaml")
)
CONFIGS += [CFG_ROOT / "robomimic/finetune/lift/rlpd_mlp.yaml"]
# Cal-QL (DPPO's calql_mlp_offline / calql_mlp_online files)
CONFIGS += sorted(CFG_ROOT.glob("*/pretrain/*/calql_mlp_offline*.yaml")) + sorted(
    CFG_ROOT.glob("*/finetune/*/calql_mlp_online*.yaml")
)
# IBRL (DPPO's ibrl_mlp files)
CONFIGS += sorted(CFG_ROOT.glob("*/finetune/*/ibrl_mlp*.yaml"))
# flow Q-learning on the flow policy (not in DPPO): the same checks
CONFIGS += [
    CFG_ROOT / s / "finetune" / t / "ft_fql_reflow_mlp.yaml"
    for s, ts in (("gym", GYM_TASKS), ("robomimic", ROBOMIMIC_TASKS))
    for t in ts
]
AGENTS = {
    "dql": "agent.finetune.dql.DQLAgent",
    "qsm": "agent.finetune.qsm.QSMAgent",
    "dipo": "agent.finetune.dipo.DIPOAgent",
    "idql": "agent.finetune.idql.IDQLAgent",
    "rwr": "agent.finetune.rwr.RWRAgent",
    "awr": "agent.finetune.awr.AWRAgent",
    "fql": "agent.finetune.fql.FQLAgent",
    "sac": "agent.finetune.sac.SACAgent",
    "rlpd": "agent.finetune.rlpd.RLPDAgent",
    "ibrl": "agent.finetune.ibrl.IBRLAgent",
    "calql": "agent.finetune.calql.CalQLAgent",
}


def algo_of(path: Path) -> str:
    first = path.parts[-3] == "scratch" or path.stem.startswith(("rlpd", "ibrl", "calql"))
    return path.stem.split("_")[0 if first else 1]


def params(paths: list[Path], slow_suites: tuple[str, ...] = ()) -> list:
    out = []
    for p in paths:
        marks = [pytest.mark.slow] if p.parts[-4] in slow_suites else []
        out.append(pytest.param(p, id=f"{p.parts[-4]}/{p.parent.name}/{p.stem}", marks=marks))
    return out


def load(path: Path, overrides: list[str] = ()):
    cfg = compose(path.parent, path.stem, ["wandb=null", *overrides])
    OmegaConf.resolve(cfg)
    return cfg


def test_every_dppo_baseline_config_exists():
    missing = [str(p.relative_to(CFG_ROOT)) for p in CONFIGS if not p.is_file()]
    assert not missing, missing


# DPPO's hopper values; buffer sizes count transitions (DPPO's per-step entries x 40).
HOPPER_TRAIN = {
    "dql": {
        "buffer_size": 1_000_000,
        "replay_ratio": 16,
        "eta": 1.0,
        "target_ema_rate": 0.005,
        "n_critic_warmup_itr": 5,
    },
    "qsm": {
        "buffer_size": 1_000_000,
        "replay_ratio": 16,
        "q_grad_coeff": 10,
        "critic_tau": 0.005,
        "n_critic_warmup_itr": 5,
    },
    "dipo": {
        "buffer_size": 1_000_000,
        "replay_ratio": 64,
        "target_ema_rate": 0.005,
        "action_lr": 1e-4,
        "action_gradient_steps": 10,
        "n_critic_warmup_itr": 5,
    },
    "idql": {
        "buffer_size": 1_000_000,
        "replay_ratio": 128,
        "critic_tau": 0.001,
        "eval_sample_num": 20,
        "eval_deterministic": True,
        "use_expectile_exploration": True,
        "n_critic_warmup_itr": 5,
    },
    "rwr": {"beta": 10, "max_reward_weight": 100, "update_epochs": 16, "lr": 1e-4, "weight_decay": 0},
    "awr": {"buffer_size": 200_000, "replay_ratio": 64, "critic_update_ratio": 4, "beta": 10, "max_adv_weight": 100},
}


@pytest.mark.parametrize("algo", ALGOS)
def test_hopper_baseline_values_are_the_reference_ones(algo: str):
    cfg = load(CFG_ROOT / "gym/finetune/hopper-v2" / f"ft_{algo}_diffusion_mlp.yaml")
    assert cfg.name == f"hopper-medium-v2_{algo}_diffusion_mlp_ta4_td20"
    assert (cfg.env.n_envs, cfg.train.n_steps, cfg.train.n_train_itr, cfg.train.val_freq) == (40, 500, 1000, 10)
    assert cfg.train.gamma == 0.99 and cfg.env.reset_at_iteration is False and cfg.train.batch_size == 1000
    assert cfg.train.n_critic_warmup_itr == HOPPER_TRAIN[algo].pop("n_critic_warmup_itr", 0)
    for key, value in HOPPER_TRAIN[algo].items():
        assert cfg.train[key] == value, key
    assert (cfg.horizon_steps, cfg.act_steps, cfg.denoising_steps, cfg.ft_denoising_steps) == (4, 4, 20, 0)
    assert cfg.model.randn_clip_value == 3 and cfg.model.min_sampling_denoising_std == 0.1
    net = cfg.model.network
    assert (net.time_dim, list(net.mlp_dims), net.activation_type, net.residual_style) == (16, [512] * 3, "ReLU", True)
    if algo != "rwr":
        assert cfg.train.scale_reward_factor == 0.01
        assert (cfg.train.actor_lr, cfg.train.actor_lr_scheduler.min_lr) == (1e-4, 1e-4)  # constant
        assert (cfg.train.critic_lr, cfg.train.critic_lr_scheduler.min_lr) == (1e-3, 1e-3)
    for key in ("critic", "critic_q", "critic_v"):
        if key in cfg.model:
            critic = cfg.model[key]
            assert (list(critic.mlp_dims), critic.activation_type) == ([256] * 3, "Mish")
            if critic._target_.endswith("CriticObsAct"):  # DPPO's was a plain MLP (docs/algorithms.md, D6)
                assert critic.action_steps == 4 and critic.residual_style is False


ROBOMIMIC_ITR = {"can": {"dql": 300, "dipo": 300}, "lift": {"dipo": 300}, "square": {"dipo": 300}}
ROBOMIMIC_DEFAULT_ITR = {"can": 151, "lift": 81, "square": 201, "transport": 201}


@pytest.mark.parametrize("task", ROBOMIMIC_TASKS)
def test_robomimic_baseline_values_are_the_reference_ones(task: str):
    """Reference 8.5: gamma 0.999, rewards unscaled, actor lr 1e-5, critic lr 1e-3, batch 1000, and per algorithm."""
    for algo in ALGOS:
        cfg = load(CFG_ROOT / "robomimic/finetune" / task / f"ft_{algo}_diffusion_mlp.yaml")
        itr = ROBOMIMIC_ITR.get(task, {}).get(algo, ROBOMIMIC_DEFAULT_ITR[task])
        assert cfg.train.n_train_itr == itr, algo
        assert cfg.train.gamma == 0.999 and cfg.env.n_envs == 50 and cfg.train.batch_size == 1000
        assert cfg.horizon_steps == cfg.act_steps == (8 if task == "transport" else 4)
        assert cfg.train.n_steps == (300 if task in ("can", "lift") else 400)
        if algo == "rwr":
            assert (cfg.train.lr, cfg.train.update_epochs, cfg.train.beta, cfg.train.max_reward_weight) == (
                1e-5,
                16,
                10,
                100,
            )
        else:
            assert (cfg.train.scale_reward_factor, cfg.train.actor_lr, cfg.train.critic_lr) == (1, 1e-5, 1e-3)
        warmup = {"dql": 5, "qsm": 5, "idql": 5, "dipo": 5 if task == "lift" else 2}.get(algo, 2)
        assert cfg.train.n_critic_warmup_itr == warmup, algo
    cfg = load(CFG_ROOT / "robomimic/finetune" / task / "ft_idql_diffusion_mlp.yaml")
    assert (cfg.train.eval_sample_num, cfg.train.replay_ratio, cfg.train.critic_tau) == (10, 128, 0.001)
    assert cfg.train.buffer_size == 5000 * 50
    assert load(CFG_ROOT / "robomimic/finetune" / task / "ft_awr_diffusion_mlp.yaml").train.buffer_size == 3000 * 50
    dipo = load(CFG_ROOT / "robomimic/finetune" / task / "ft_dipo_diffusion_mlp.yaml")
    assert (dipo.train.replay_ratio, dipo.train.buffer_size) == (16, 1_000_000)


@pytest.mark.parametrize("path", params(CONFIGS))
def test_baseline_config_matches_its_pretraining_config(path: Path, tmp_dirs: Path):
    cfg = load(path)
    offline_stage = cfg._target_ == "agent.finetune.calql.CalQLOfflineAgent"
    assert cfg._target_ == AGENTS[algo_of(path)] or offline_stage
    assert cfg.env.name == cfg.env_name and cfg.get("ft_denoising_steps", 0) == 0
    assert cfg.model.get("ft_denoising_steps", 0) == 0
    assert cfg.horizon_steps == cfg.act_steps
    if algo_of(path) == "calql" and not offline_stage:  # its base is the offline stage's run
        assert Path(cfg.base_policy_path).name == cfg.pretrain_name
        return
    if cfg.base_policy_path is None:  # from scratch
        assert (path.parts[-3] == "scratch" or algo_of(path) in ("rlpd", "calql")) and cfg.horizon_steps == 1
        assert algo_of(path) in ("sac", "rlpd", "calql") or (cfg.denoising_steps, cfg.env.n_envs) == (10, 10)
        return
    pre = pretrain_config_of(cfg)
    OmegaConf.resolve(pre)
    assert Path(cfg.base_policy_path).name == pre.name, "default base_policy_path must be the pretraining run folder"
    assert cfg.normalization_path == pre.normalization_path
    for key in ARCHITECTURE_KEYS:
        if key in pre:
            assert cfg[key] == pre[key], key
    assert cfg.model._target_ == pre.model._target_
    for key, value in pre.model.network.items():
        if key not in TUNABLE_NETWORK_KEYS:
            assert cfg.model.network.get(key) == value, f"model.network.{key}"


def agent_of(cfg):
    from hydra.utils import get_class

    return get_class(cfg._target_)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["horizon_steps=8"], "horizon_steps=8 but act_steps=4: this baseline stores and scores executed"),
        (["ft_denoising_steps=5"], "ft_denoising_steps=5: the diffusion baselines fine-tune the whole network"),
        (["train.buffer_size=10"], r"train.buffer_size=10 must be an integer >= env.n_envs=40"),
        (["train.replay_ratio=0.01"], "< 1 gradient step per iteration"),
        (["train.critic_tau=0"], r"train.critic_tau must be in \(0, 1\]"),
    ],
)
def test_impossible_baseline_settings_are_one_line_errors(overrides: list[str], message: str, tmp_dirs: Path):
    path = CFG_ROOT / "gym/finetune/hopper-v2/ft_qsm_diffusion_mlp.yaml"
    cfg = compose(path.parent, path.stem, ["wandb=null", "device=cpu", "base_policy_path=null", *overrides])
    with pytest.raises(ConfigError, match=message):
        agent_of(cfg)(cfg)


TINY = [
    "device=cpu",
    "wandb=null",
    "env.n_envs=2",
    "train.n_steps=4",
    "train.n_train_itr=2",
    "train.val_freq=1",
    "train.eval_n_episodes=null",
    "train.eval_n_steps=3",
    "train.save_model_freq=100",
    "train.n_critic_warmup_itr=1",  # iteration 1 trains the critics only, iteration 2 the actor too
    "train.batch_size=4",
]
TINY_REPLAY = ["train.buffer_size=64", "train.replay_ratio=1"]  # 4 * 2 / 4 * 1 = 2 gradient steps per iteration
# RWR learns from the episodes that finish in an iteration: 8-step episodes end twice in 4 chunks of 4 steps.
TINY_ALGO = {
    "idql": ["train.eval_sample_num=2"],
    "rwr": ["train.update_epochs=2", "env.max_episode_steps=8"],
    "sac": ["train.n_explore_steps=0"],
    "rlpd": ["train.n_explore_steps=0", "train.critic_updates_per_actor=1"],
    "ibrl": ["train.critic_updates_per_actor=1"],
    "calql": ["train.n_target_actions=2", "train.n_random_actions=2"],
}
MODULES = {
    "dql": {"critic", "critic_target"},
    "qsm": {"critic", "critic_target"},
    "dipo": {"critic", "critic_target", "actor_target"},
    "idql": {"critic_q", "critic_q_target", "critic_v"},
    "awr": {"critic"},
    "rwr": set(),
    "fql": {"critic", "critic_target", "actor_onestep"},
    "sac": {"critic", "critic_target", "temperature"},
    "rlpd": {"critic", "critic_target", "temperature"},
    "ibrl": {"critic", "critic_target", "bc_policy", "actor_target"},
    "calql": {"critic", "critic_target", "temperature"},
}


@pytest.mark.parametrize("path", params(CONFIGS, slow_suites=("robomimic",)))
def test_baseline_config_runs_two_iterations(path: Path, tmp_dirs: Path):
    algo = algo_of(path)
    probe = load(path)
    skip_unless_suite_available(probe.env_name)
    overrides = [*TINY, *([] if algo == "rwr" else TINY_REPLAY), *TINY_ALGO.get(algo, [])]
    if algo == "calql":  # the online stage starts from the offline one's run; here from scratch
        overrides.append("base_policy_path=null")
    if probe.base_policy_path is None or algo == "calql":  # from scratch: the env normalises with the data's stats
        write_normalization(Path(probe.normalization_path), probe.obs_dim, probe.action_dim)
        if algo == "rwr":  # single-step chunks: 2-step episodes end twice in 4 chunks
            overrides.append("env.max_episode_steps=2")
    else:
        pre = pretrain_config_of(probe)
        ckpt = write_pretrain_checkpoint(tmp_dirs / "pre" / "checkpoint" / "state_1.pt", pre)
        overrides.append(f"base_policy_path={ckpt.parent.parent}")
    if algo in ("rlpd", "ibrl", "calql"):  # their offline transitions
        rng = np.random.default_rng(0)
        Path(probe.offline_dataset_path).parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            probe.offline_dataset_path,
            states=rng.uniform(-1, 1, (20, probe.obs_dim)),
            actions=rng.uniform(-1, 1, (20, probe.action_dim)),
            rewards=rng.normal(size=20),
            traj_lengths=[10, 10],
        )
    start = time.perf_counter()
    cfg = compose(path.parent, path.stem, overrides)
    agent = agent_of(cfg)(cfg)
    agent.run()
    elapsed = time.perf_counter() - start
    rows = read_metrics(agent.logdir)
    train = [r for r in rows if "train/reward_mean" in r or "train/n_updates" in r]  # (Cal-QL offline: no rollouts)
    assert [r["step"] for r in train] == [1, 2]
    assert [r["step"] for r in rows if "eval/n_episodes" in r] == [0, 1, 2]
    if algo == "rwr":
        assert "train/loss" not in train[0], "the warm-up iteration must not train the actor"
        assert train[1]["train/n_samples"] > 0 and math.isfinite(train[1]["train/loss"]), train[1]
    else:
        critic_key = "train/v_loss" if algo == "idql" else "train/critic_loss"
        assert "train/actor_loss" not in train[0], "the warm-up iteration must not train the actor"
        for key in (critic_key, "train/actor_loss"):
            assert train[1][key] is not None and math.isfinite(train[1][key]), (key, train[1])
        assert cfg._target_.endswith("OfflineAgent") or train[1]["train/buffer_transitions"] == 2 * 4 * 2
    saved = load_checkpoint(latest_checkpoint(agent.logdir))
    assert saved["itr"] == 2 and saved["kind"] == "finetune" and saved["ft_denoising_steps"] == 0
    assert set(saved["algorithm"]["modules"]) == MODULES[algo]
    print(f"{path.parts[-4]}/{path.parent.name}/{path.stem}: {elapsed:.1f} s")
