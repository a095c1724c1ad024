"""The fine-tuning loop end to end on the bandit test suite: evaluation of fine-tuned checkpoints (and the K'
mismatch error), resume, truncation bootstrapping, evaluations that do not consume iterations, videos, base-policy
errors, and the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from agent.checkpoint import checkpoint_path, latest_checkpoint, load_checkpoint
from agent.config import CFG_ROOT, compose
from agent.errors import ConfigError
from agent.logger import read_metrics
from tests.conftest import REPO
from tests.unit.test_ppo_bandit import DIFFUSION_NET, TASK, finetune_config, pretrain, write_demos

EVAL_DIR = CFG_ROOT / "gym/eval/hopper-v2"


@pytest.fixture
def base(tmp_dirs: Path) -> Path:
    """A briefly pretrained diffusion policy on the bandit demos (run folder)."""
    torch.manual_seed(0)
    write_demos(tmp_dirs / "data")
    return pretrain("diffusion", epochs=2)


def run_finetune(base: Path, n_itr: int, extra: list[str] = ()):
    from agent.finetune.ppo import PPOAgent

    agent = PPOAgent(finetune_config("diffusion", base, n_itr, ["train.val_freq=1", *extra]))
    agent.run()
    return agent


def eval_agent(ckpt: Path, k_ft: int, extra: list[str] = ()):
    from agent.eval import EvalAgent

    overrides = [*TASK, *DIFFUSION_NET, "horizon_steps=2", "act_steps=2", "env.n_envs=4", "env.max_episode_steps=2"]
    return EvalAgent(
        compose(
            EVAL_DIR,
            "eval_diffusion_mlp",
            [*overrides, f"base_policy_path={ckpt}", f"ft_denoising_steps={k_ft}", *extra],
        )
    )


def test_eval_of_finetuned_checkpoint_uses_finetuned_weights(base: Path):
    ft = run_finetune(base, 2, ["train.actor_lr=1e-2", "train.actor_lr_scheduler.min_lr=1e-2"])
    ckpt = latest_checkpoint(ft.logdir)
    saved = load_checkpoint(ckpt)
    assert saved["itr"] == 2 and saved["ft_denoising_steps"] == 5

    tuned = eval_agent(ckpt, 5, ["env.save_video=true"])
    pre = eval_agent(base, 0)
    assert tuned.checkpoint_kind == "finetune" and pre.checkpoint_kind == "pretrain"
    for key, value in tuned.policy.actor_ft.state_dict().items():
        torch.testing.assert_close(value, saved["model"][f"actor_ft.{key}"])
    # the frozen base is the pretrained EMA network in both
    pre_ema = load_checkpoint(latest_checkpoint(base))["ema"]
    for key, value in tuned.policy.network.state_dict().items():
        torch.testing.assert_close(value, pre_ema[f"network.{key}"])
    cond = {"state": torch.rand(64, 1, 2) * 2 - 1}
    with torch.no_grad():
        torch.manual_seed(3)
        a_tuned = tuned.policy.sample(cond, deterministic=True).actions
        torch.manual_seed(3)
        a_pre = pre.policy.sample(cond, deterministic=True).actions
    assert (a_tuned - a_pre).abs().max() > 1e-3, "evaluation must use the fine-tuned network for the last K' steps"

    result = tuned.run()
    written = json.loads((tuned.logdir / "eval_result.json").read_text())
    assert written["n_episodes"] == 4 == result["n_episodes"] and written["checkpoint_kind"] == "finetune"
    assert -10 < written["episode_return"] < 0 and 0 <= written["success_rate"] <= 1
    assert list((tuned.logdir / "videos").glob("*.mp4")), "env.save_video=true must write videos"

    with pytest.raises(ConfigError, match="ft_denoising_steps=5 but this config has ft_denoising_steps=3"):
        eval_agent(ckpt, 3)
    with pytest.raises(ConfigError, match="set ft_denoising_steps=5"):
        eval_agent(ckpt, 0)
    with pytest.raises(ConfigError, match="pretraining checkpoint .* set ft_denoising_steps=0"):
        eval_agent(base, 5)


def test_resume_continues_at_the_same_iteration_with_identical_optimizer_state(base: Path):
    from agent.finetune.ppo import PPOAgent

    first = run_finetune(base, 2, ["train.save_model_freq=1"])
    ckpt_path = checkpoint_path(first.logdir, 1)
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt["itr"] == 1 and ckpt["reward_scaler"] is None

    cfg = finetune_config(
        "diffusion",
        base,
        3,
        ["train.val_freq=1", "train.save_model_freq=1", f"resume={ckpt_path}", "train.reward_scale_running=false"],
    )
    agent = PPOAgent(cfg)
    assert agent.itr == 1 and agent.env_steps == ckpt["env_steps"]
    for name, opt in agent.algorithm.optimizers.items():
        saved = ckpt["algorithm"]["optimizers"][name]
        for pid, state in opt.state_dict()["state"].items():
            for key in ("exp_avg", "exp_avg_sq", "step"):
                torch.testing.assert_close(state[key], saved["state"][pid][key])
    assert {k: s.n_steps for k, s in agent.algorithm.schedulers.items()} == {"actor": 1, "critic": 1}
    torch.testing.assert_close(agent.policy.state_dict(), ckpt["model"])
    agent.run()
    rows = [r for r in read_metrics(agent.logdir) if "train/reward_mean" in r]
    assert [r["step"] for r in rows] == [2, 3]
    assert load_checkpoint(latest_checkpoint(agent.logdir))["itr"] == 3


def test_a_flow_run_resumes_where_it_stopped(tmp_dirs: Path):
    """Checkpoint and resume need nothing flow-specific: the noise network and the optimiser state come back."""
    from agent.finetune.ppo import PPOAgent

    torch.manual_seed(0)
    write_demos(tmp_dirs / "data")
    flow_base = pretrain("reflow", epochs=2)
    first = PPOAgent(finetune_config("reflow", flow_base, 2, ["train.save_model_freq=1"]))
    first.run()
    ckpt_path = checkpoint_path(first.logdir, 1)
    ckpt = load_checkpoint(ckpt_path)
    assert any(k.startswith("noise.") for k in ckpt["model"])
    agent = PPOAgent(finetune_config("reflow", flow_base, 3, ["train.save_model_freq=1", f"resume={ckpt_path}"]))
    assert agent.itr == 1
    torch.testing.assert_close(agent.policy.state_dict(), ckpt["model"])
    agent.run()
    assert [r["step"] for r in read_metrics(agent.logdir) if "train/reward_mean" in r] == [2, 3]


def test_resume_true_restores_the_reward_scaler(base: Path):
    from agent.finetune.ppo import PPOAgent

    first = run_finetune(base, 1, ["train.reward_scale_running=true"])
    saved = load_checkpoint(latest_checkpoint(first.logdir))["reward_scaler"]
    assert saved is not None and saved["count"] > 1
    agent = PPOAgent(finetune_config("diffusion", base, 2, ["train.reward_scale_running=true", "resume=true"]))
    assert agent.itr == 1 and agent.reward_scaler.state_dict()["count"] == saved["count"]


def test_evaluations_do_not_consume_iterations_or_step_schedulers(base: Path):
    agent = run_finetune(base, 3)
    rows = read_metrics(agent.logdir)
    assert [r["step"] for r in rows if "train/reward_mean" in r] == [1, 2, 3]
    assert [r["step"] for r in rows if "eval/episode_return" in r] == [0, 1, 2, 3]
    sched = load_checkpoint(latest_checkpoint(agent.logdir))["algorithm"]["schedulers"]
    assert sched["actor"]["n_steps"] == 3 and sched["critic"]["n_steps"] == 3


def test_env_step_budget_stops_early_with_a_checkpoint_and_a_final_evaluation(base: Path):
    probe = run_finetune(base, 1)
    per_itr = probe.env_steps
    agent = run_finetune(
        base, 10, [f"train.max_env_steps={2 * per_itr}", "train.val_freq=5", "train.save_model_freq=5"]
    )
    assert agent.itr == 2 and agent.env_steps == 2 * per_itr
    assert load_checkpoint(latest_checkpoint(agent.logdir))["itr"] == 2
    rows = read_metrics(agent.logdir)
    assert [r["step"] for r in rows if "eval/episode_return" in r] == [0, 2]


def test_wall_time_budget_counts_evaluations_and_survives_resume(base: Path):
    from agent.finetune.ppo import PPOAgent

    first = run_finetune(base, 1)
    saved = load_checkpoint(latest_checkpoint(first.logdir))
    assert saved["wall_s"] > saved["elapsed_s"] > 0  # the evaluations at iterations 0 and 1 count
    # a budget already spent: the resumed run trains no further iteration
    budget = saved["wall_s"] / 60 / 2
    agent = PPOAgent(finetune_config("diffusion", base, 5, ["resume=true", f"train.max_wall_min={budget}"]))
    agent.run()
    assert agent.itr == 1


@pytest.mark.parametrize("value", ["0", "-1", "abc", "true"])
def test_bad_budget_is_a_config_error(base: Path, value: str):
    with pytest.raises(ConfigError, match="train.max_env_steps must be a positive number"):
        run_finetune(base, 1, [f"train.max_env_steps={value}"])


def test_truncation_bootstraps_with_the_final_observation_value(base: Path):
    """Episodes of 10 env steps cut at 4 (two chunks): truncated steps bootstrap with V(final_obs)."""
    from agent.finetune.ppo import PPOAgent

    cfg = finetune_config("diffusion", base, 1, ["env.max_episode_steps=4", "+env.env_kwargs.episode_steps=10"])
    agent = PPOAgent(cfg)
    agent.collect()
    buf = agent.buffer
    assert buf.truncated[1::2].all() and not buf.truncated[0::2].any() and not buf.terminated.any()
    assert buf.firsts[0::2].all() and not buf.firsts[1::2].any()
    # The bandit's state is constant within an episode, so final_obs of a truncated step is that step's obs.
    rows = buf.truncated.nonzero()
    with torch.no_grad():
        expected = agent.algorithm.critic({"state": buf.obs["state"][rows[:, 0], rows[:, 1]]})
    torch.testing.assert_close(buf.bootstrap_values[rows[:, 0], rows[:, 1]], expected)
    agent.compute_values()
    nxt = buf.next_values()
    torch.testing.assert_close(nxt[1::2][:-1], buf.bootstrap_values[1::2][:-1])
    assert not torch.allclose(nxt[1::2][:-1], buf.values[2::2])  # not the next episode's first state
    stats = agent.episodes.summary()
    assert stats["n_episodes"] == 16 * 4 and stats["episode_length"] == 4
    agent.env.close()


def test_base_policy_with_other_network_dims_is_a_clear_error(base: Path):
    from agent.finetune.ppo import PPOAgent

    cfg = finetune_config("diffusion", base, 1, ["model.network.mlp_dims=[32,32,32]"])
    with pytest.raises(ConfigError, match=r"model.network.mlp_dims=\[64, 64, 64\] but this config has"):
        PPOAgent(cfg)
    cfg = finetune_config("diffusion", base, 1, ["denoising_steps=20"])
    with pytest.raises(ConfigError, match="denoising_steps=10 but this config has denoising_steps=20"):
        PPOAgent(cfg)


def test_missing_base_policy_names_the_pretrain_command(tmp_dirs: Path):
    from agent.finetune.ppo import PPOAgent

    cfg = compose(CFG_ROOT / "gym/finetune/hopper-v2", "ft_ppo_diffusion_mlp", ["device=cpu", "wandb=null"])
    with pytest.raises(ConfigError) as err:
        PPOAgent(cfg)
    assert "--config-name=pre_diffusion_mlp --config-dir=cfg/gym/pretrain/hopper-medium-v2" in str(err.value)


def test_cli_finetune_error_is_one_line(tmp_path: Path):
    env = {**os.environ, "DPPO_DATA_DIR": str(tmp_path / "data"), "DPPO_LOG_DIR": str(tmp_path / "log")}
    args = ["--config-name=ft_ppo_diffusion_mlp", "--config-dir=cfg/gym/finetune/hopper-v2", "device=cpu", "wandb=null"]
    out = subprocess.run(
        [sys.executable, "script/run.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: base_policy_path=") and "pretrain first" in last and "Traceback" not in out.stderr


def test_ddim_finetuning_with_a_learned_eta_from_the_config(base: Path):
    """DDIM fine-tuning (docs/algorithms.md#ddim) through config keys: all Kd = K' = 5 DDIM steps, EtaFixed learned."""
    from agent.finetune.ppo import PPOAgent

    eta = "+model.eta={_target_:model.diffusion.eta.EtaFixed,base_eta:0.5,min_eta:0.1,max_eta:1.0}"
    extra = ["model.use_ddim=true", "model.ddim_steps=5", "ft_denoising_steps=5", eta, "model.learn_eta=true",
             "train.eta_lr=1e-2", "train.ent_coef=0.01"]  # fmt: skip
    agent = PPOAgent(finetune_config("diffusion", base, 1, extra))
    assert agent.policy.use_ddim and "eta" in agent.algorithm.optimizers
    before = agent.policy.eta.eta_logit.item()
    agent.run()
    assert agent.policy.eta.eta_logit.item() != before
    saved = load_checkpoint(latest_checkpoint(agent.logdir))
    assert "eta.eta_logit" in saved["model"] and "eta" in saved["algorithm"]["optimizers"]
    # an eval config has no eta (deterministic DDIM uses eta = 0): the checkpoint still loads, fine-tuned weights
    evaluator = eval_agent(latest_checkpoint(agent.logdir), 5, ["model.use_ddim=true", "model.ddim_steps=5"])
    assert evaluator.checkpoint_kind == "finetune" and evaluator.policy.eta is None
    for key, value in evaluator.policy.actor_ft.state_dict().items():
        torch.testing.assert_close(value, saved["model"][f"actor_ft.{key}"])
    assert evaluator.run()["n_episodes"] == 4


def test_pipelined_rollout_records_what_the_envs_did(base: Path):
    """env.pipeline (the gym configs' default): the buffer holds each step's observation, chain and the env's answer
    to the chain's action, checked by replaying the stored actions in a plain vector env from the same seed."""
    import numpy as np

    from agent.finetune.ppo import PPOAgent
    from agent.rollout import make_env
    from env.pipeline import PipelinedVectorEnv

    cfg = finetune_config("diffusion", base, 1, ["env.max_episode_steps=4", "+env.env_kwargs.episode_steps=10"])
    agent = PPOAgent(cfg)
    assert isinstance(agent.env, PipelinedVectorEnv) and len(agent.env.groups) == 2
    threads = torch.get_num_threads()
    agent.collect()
    assert torch.get_num_threads() == threads  # the policy's thread count is restored after the rollout
    buf = agent.buffer
    plain = make_env(replace(agent.exp.env, pipeline=False), agent.logdir, None, agent.seed)
    obs, _ = plain.reset()
    for t in range(agent.n_steps):
        np.testing.assert_array_equal(buf.obs["state"][t].numpy(), obs["state"])
        actions = buf.chains[t, :, -1, : agent.act_steps].numpy()
        obs, reward, terminated, truncated, _ = plain.step(actions)
        np.testing.assert_allclose(buf.rewards[t].numpy(), reward, rtol=1e-6)
        assert buf.terminated[t].tolist() == terminated.tolist() and buf.truncated[t].tolist() == truncated.tolist()
    assert buf.truncated.any()
    np.testing.assert_array_equal(agent._obs["state"], obs["state"])
    plain.close()
    agent.env.close()
