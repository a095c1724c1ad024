"""Evaluation agent: deterministic rollouts of a pretraining or fine-tuning checkpoint.

    python script/run.py --config-name=eval_diffusion_mlp --config-dir=cfg/gym/eval/hopper-v2 \
        base_policy_path=<checkpoint or run folder> ft_denoising_steps=10

`base_policy_path` may be a pretraining checkpoint (evaluated with its EMA weights, `ft_denoising_steps=0`;
DPPO evaluated the non-EMA weights, docs/algorithms.md#d9-ema-weights-everywhere) or a fine-tuning checkpoint
(the frozen base runs the first denoising steps and the fine-tuned copy the last `ft_denoising_steps`, which must
equal the checkpoint's: a mismatch is a `ConfigError`, never silently another policy). Algorithms that choose
actions with more than the policy (DIPO acts with its target actor, IDQL picks among candidates with its critics)
are rebuilt from the checkpoint and evaluated the way they were evaluated in training.

Reports mean return, success rate (where the task has a success signal; gym locomotion has none), mean episode
length and the episode count over `n_episodes` episodes (one per env by default, each env's first ones, so short
episodes are not favoured) or, with `n_episodes: null`, over the episodes that finish within `n_steps` chunks per
env, with a progress bar on stderr. The result goes to `<logdir>/eval_result.json` and the metrics log; with
`env.save_video: true` the first sub-env's episodes are written to `<logdir>/videos/`.
"""

from __future__ import annotations

import json
import logging
from typing import Any, cast

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from agent.base import BaseAgent, check_normalization, run_normalization
from agent.checkpoint import load_checkpoint
from agent.config import require
from agent.errors import ConfigError
from agent.finetune.loading import build_policy, find_checkpoint, load_policy_weights, pretrain_command
from agent.rollout import env_reports_success, load_env_block, make_env, run_episodes
from model.base import Policy

log = logging.getLogger(__name__)


def checkpoint_actor(ckpt: dict, policy: Policy, device: torch.device) -> Any:
    """What acts in evaluation: `policy`, or, for a fine-tuning checkpoint of an algorithm with its own action
    selection (a `ReplayAlgorithm` with `selects_actions`), that algorithm rebuilt from the checkpoint's config and
    state around `policy`, seen through `ActingPolicy` (so `sample` routes through `act`)."""
    from hydra.utils import get_class

    from agent.finetune.base import Experiment
    from agent.finetune.replay import ActingPolicy, ReplayAlgorithm

    target = (ckpt.get("config") or {}).get("_target_")
    if ckpt.get("kind") != "finetune" or not target or "algorithm" not in ckpt:
        return policy
    try:
        algorithm_class = getattr(get_class(target), "algorithm_class", None)
    except Exception:  # a checkpoint from a renamed or removed agent: its policy weights are all there is
        return policy
    if not (isinstance(algorithm_class, type) and issubclass(algorithm_class, ReplayAlgorithm)):
        return policy
    if not algorithm_class.selects_actions:
        return policy
    saved = OmegaConf.create(ckpt["config"])
    algorithm = algorithm_class.from_config(Experiment.from_config(saved, algorithm_class), policy, device)
    algorithm.load_state_dict(ckpt["algorithm"])
    for module in algorithm.modules.values():
        module.eval()
    log.info("actions are chosen by %s.act, as in its training evaluations", algorithm_class.__name__)
    return ActingPolicy(cast(ReplayAlgorithm, algorithm))


class EvalAgent(BaseAgent):
    """Evaluate `base_policy_path` on `cfg.env` with deterministic sampling."""

    def validate(self, cfg: DictConfig) -> None:
        run = self.run_cfg
        self.env_cfg = load_env_block(cfg)
        require(run.act_steps is not None, "act_steps (env steps executed per action chunk) must be set")
        require(
            run.n_episodes is not None or run.n_steps is not None,
            "set n_episodes, or n_steps to an integer >= 1 (got n_steps=None)",
        )
        base = run.base_policy_path
        if not base:
            raise ConfigError("base_policy_path must name the checkpoint to evaluate")
        self.base_path = base
        if find_checkpoint(base) is None:
            raise ConfigError(
                f"base_policy_path={base} has no checkpoint; pass base_policy_path=<state_<N>.pt or run folder> "
                f"(a fine-tuning run's, or a pretraining one's from `{pretrain_command(run)}`)"
            )

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        c, run = self.cfg, self.run_cfg
        self.checkpoint_path = find_checkpoint(self.base_path)
        assert self.checkpoint_path is not None  # validate() checked it
        ckpt = load_checkpoint(self.checkpoint_path, allow_pickle=run.allow_pickle)
        norm = ckpt.get("normalization")
        ckpt_norm = {k: np.asarray(v) for k, v in norm.items()} if norm else None
        check_normalization(ckpt_norm, run, f"the normalization stored in {self.checkpoint_path}")
        self.policy = build_policy(c)
        self.checkpoint_kind = load_policy_weights(self.policy, ckpt, c, self.checkpoint_path, for_eval=True)
        self.policy.to(self.device).eval()
        self.actor = checkpoint_actor(ckpt, self.policy, self.device)
        log.info("evaluating the %s checkpoint %s", self.checkpoint_kind, self.checkpoint_path)
        self.normalization = run_normalization(run, ckpt_norm)
        self.env = make_env(self.env_cfg, self.logdir, ckpt_norm, self.seed, run.robomimic_env_cfg_path)

    def run(self) -> dict[str, Any]:
        """Roll out, write `<logdir>/eval_result.json`, log `eval/*`; returns the result."""
        run, env_cfg = self.run_cfg, self.env_cfg
        assert run.act_steps is not None  # validate() checked it
        try:
            episodes = run_episodes(
                self.env,
                self.actor,
                act_steps=run.act_steps,
                device=self.device,
                n_steps=run.n_steps,
                n_episodes=run.n_episodes,
                max_episode_steps=env_cfg.max_episode_steps,
                success_threshold=env_cfg.best_reward_threshold_for_success,
                reports_success=env_reports_success(env_cfg.name),
                reset_options={"video_prefix": "eval"} if env_cfg.save_video else None,
                progress=True,
            )
        finally:
            self.env.close()
        result: dict[str, Any] = {
            **episodes,
            "checkpoint": str(self.checkpoint_path),
            "checkpoint_kind": self.checkpoint_kind,
            "ft_denoising_steps": self.policy.ft_denoising_steps,
        }
        with open(self.logdir / "eval_result.json", "w") as f:
            json.dump(result, f, indent=2)
        self.logger.log({f"eval/{k}": v for k, v in result.items() if isinstance(v, (int, float))}, step=0)
        self.logger.close()
        if result.get("n_episodes", 0) == 0:
            log.warning("no episode finished; raise n_steps or set n_episodes")
        return result
