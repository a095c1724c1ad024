"""What every fine-tuning loop shares: env, policy and base weights, episode bookkeeping, evaluation, checkpoints,
resume, logging and the progress bar. Subclasses add how data is collected and learned from.

    FinetuneAgent (this file)          env + policy + evaluation + checkpoint/resume + logging + run()
      OnPolicyAgent (onpolicy.py)      rollout buffer, values, reward scaling, GAE; algorithm.update(buffer)
        PPOAgent (ppo.py)              algorithm_class = PPO
        RWRAgent (rwr.py)              algorithm_class = RWR
      ReplayAgent (replay.py)          replay buffer, sampling; algorithm.update(buffer)
        DQLAgent, QSMAgent, DIPOAgent, IDQLAgent, AWRAgent (dql.py, qsm.py, dipo.py, idql.py, awr.py)

An `Algorithm` holds an update rule and the state it needs (critics, optimisers, schedulers) and nothing about
environments. To add one, subclass the loop's algorithm base (e.g. `OnPolicyAlgorithm`), implement `from_config`
and `update`, register optimisers/schedulers/modules in the dicts below so checkpoints and learning-rate logging
pick them up, and add a two-line agent class naming it.

Iterations and evaluation (a deliberate difference, docs/algorithms.md#d2-evaluation-iterations):
`train.n_train_itr` counts training iterations only. Every `train.val_freq` iterations (and before the first and
after the last) the loop runs an evaluation rollout with deterministic sampling; it does not consume a training
iteration, does not step the learning-rate schedulers, and the envs are reset before and after it, so the next
training rollout starts from fresh episodes rather than from the evaluation's states.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm import tqdm

from agent.base import BaseAgent, check_normalization, run_normalization
from agent.checkpoint import (
    checkpoint_path,
    find_resume_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from agent.errors import ConfigError, DataError
from agent.finetune.loading import (
    build_policy,
    find_checkpoint,
    is_dppo_checkpoint,
    load_policy_weights,
    pretrain_command,
    warm_start_critics,
    warm_start_modules,
)
from agent.nonfinite import check_nan_policy, diverged, non_finite_losses, non_finite_parameters
from agent.rollout import (
    EpisodeStats,
    env_reports_success,
    load_env_block,
    make_env,
    run_episodes,
)
from agent.schedulers import CosineWarmupRestarts
from agent.schemas import FinetuneTrain, RunKeys, load_block
from agent.utils import rng_state, set_rng_state
from env.factory import EnvConfig
from model.base import Policy

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Experiment:
    """A fine-tuning config, read once before any work: its typed blocks, and the composed config itself, whose
    `model` block (a free-form mapping of `_target_`s) builds the policy and the algorithm's critics.

    Attributes:
        cfg: the composed, resolved config.
        run: the top-level keys (agent.schemas.RunKeys).
        train: the `train` block, an instance of the algorithm's `train_schema`.
        env: the `env` block (env.factory.EnvConfig).
        model: the algorithm's own keys of the `model` block (its `model_schema`), or None.
    """

    cfg: DictConfig
    run: RunKeys
    train: FinetuneTrain
    env: EnvConfig
    model: Any = None

    @classmethod
    def from_config(cls, cfg: DictConfig, algorithm_class: type[Algorithm], run: RunKeys | None = None) -> Experiment:
        """Build (and so check) every block; a bad key or value is one `ConfigError` line naming it."""
        schema = algorithm_class.model_schema
        return cls(
            cfg=cfg,
            run=run if run is not None else load_block(RunKeys, cfg, "", open_block=True),
            train=load_block(algorithm_class.train_schema, cfg.get("train"), "train"),
            env=load_env_block(cfg),
            model=load_block(schema, cfg.get("model"), "model", open_block=True) if schema is not None else None,
        )

    def train_as(self, schema: type[T]) -> T:
        """The `train` block as the algorithm's schema type (a programming error if it is another)."""
        assert isinstance(self.train, schema), f"train block is {type(self.train).__name__}, not {schema.__name__}"
        return self.train

    def model_node(self, key: str) -> Any:
        """`model.<key>` of the composed config (a network's `_target_` block, a policy argument), or None."""
        node = self.cfg.get("model")
        return node.get(key) if isinstance(node, DictConfig) else None

    @property
    def act_steps(self) -> int:
        """Te, the env steps executed per action chunk (required by every fine-tuning run)."""
        if self.run.act_steps is None:
            raise ConfigError("act_steps (env steps executed per action chunk) must be set")
        return self.run.act_steps


# ------------------------------------------------------------------------------------------------------------------
# algorithms


class Algorithm(ABC):
    """An update rule with its state: extra modules (critics), optimisers and learning-rate schedulers.

    Subclasses fill `modules`, `optimizers` and `schedulers` so that checkpoints, resume and learning-rate logging
    need no per-algorithm code.

    Attributes:
        policy: the policy being fine-tuned.
        iteration: index of the training iteration in progress (set by the loop before `update`), for warm-ups.
        model_keys: the `model.*` config keys that are the algorithm's, not the policy's (DPPO keeps both in the
            `model` block); the loop removes them before instantiating the policy.
        model_schema: the schema of the algorithm's scalar `model.*` keys (PPO's clipping), or None.
    """

    model_keys: ClassVar[frozenset[str]] = frozenset()
    train_schema: ClassVar[type[FinetuneTrain]] = FinetuneTrain
    """The schema of the `train` block (agent/schemas.py): the loop's keys plus the algorithm's."""
    model_schema: ClassVar[type | None] = None

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.iteration = 0
        self.modules: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, CosineWarmupRestarts] = {}

    @classmethod
    @abstractmethod
    def from_config(cls, exp: Experiment, policy: Policy, device: torch.device) -> Algorithm:
        """Build the algorithm (and its critics, on `device`) from the experiment's blocks."""

    @classmethod  # noqa: B027 - an optional hook, empty by default
    def validate_config(cls, exp: Experiment) -> None:
        """Algorithm-specific checks across blocks, run before any work; raise `ConfigError` with one clear line.
        (Each block's own checks already ran when `exp` was built.)"""

    @abstractmethod
    def update(self, data: Any) -> dict[str, float]:
        """Learn from `data` (a rollout buffer or a replay batch); return scalar diagnostics without prefixes."""

    def end_iteration(self) -> None:
        """Called once after each training iteration (not after evaluations): step the schedulers."""
        for scheduler in self.schedulers.values():
            scheduler.step()

    def learning_rates(self) -> dict[str, float]:
        """Current learning rate per optimiser, as `<name>_lr`."""
        return {f"{name}_lr": opt.param_groups[0]["lr"] for name, opt in self.optimizers.items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        parts = (("modules", self.modules), ("optimizers", self.optimizers), ("schedulers", self.schedulers))
        for kind, target in parts:
            saved = state.get(kind, {})
            missing = sorted(set(target) - set(saved))
            if missing:
                raise DataError(f"checkpoint lacks the algorithm's {kind} {missing}; was it written by another one?")
            for key, obj in target.items():
                obj.load_state_dict(saved[key])


# ------------------------------------------------------------------------------------------------------------------
# the shared loop


class FinetuneAgent(BaseAgent):
    """Shared fine-tuning loop; subclasses implement `setup` and `train_iteration`.

    The config is read once, in `validate`, as an `Experiment` (`self.exp`): the top-level keys (`self.run_cfg`),
    the `train` block (`self.train_cfg`, the algorithm's schema), the `env` block and the algorithm's model keys.

    Budgets: training ends after `n_train_itr` iterations, or earlier after the iteration at which the env steps
    reach `train.max_env_steps` or the run's wall time (iterations and evaluations, summed over resumed segments)
    reaches `train.max_wall_min` minutes; either way the last iteration is checkpointed and evaluated.

    Divergence (`train.nan_policy`, agent/nonfinite.py): after every iteration the `*loss*` metrics it returned and
    the weights (policy and the algorithm's modules) are checked; a non-finite loss (under `stop`, the default) or
    weight ends the run with one line naming the iteration and the last good checkpoint, before anything is saved.
    """

    algorithm_class: ClassVar[type[Algorithm]]
    progress_label: ClassVar[str] = "finetune"  # the progress bar's label (a subclass may name what it trains)

    # ---------------------------------------------------------------- config checks
    def validate(self, cfg: DictConfig) -> None:
        # every block typed and checked once (agent/schemas.py, env.factory.EnvConfig); the loop reads them
        self.exp = Experiment.from_config(cfg, self.algorithm_class, self.run_cfg)
        self.train_cfg = self.exp.train
        self.exp.act_steps  # noqa: B018 - required
        run = self.run_cfg
        if run.base_policy_path and not run.resume and find_checkpoint(run.base_policy_path) is None:
            raise ConfigError(
                f"base_policy_path={run.base_policy_path} has no checkpoint; pretrain first with "
                f"`{pretrain_command(run)}` or pass base_policy_path=<path to state_<N>.pt>"
            )
        self.algorithm_class.validate_config(self.exp)

    # ---------------------------------------------------------------- set-up
    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        c, run, env_cfg = self.cfg, self.run_cfg, self.exp.env
        self.act_steps = self.exp.act_steps
        self.n_envs = env_cfg.n_envs
        self.n_train_itr = self.train_cfg.n_train_itr
        self.resume_path = find_resume_checkpoint(run.resume, self.logdir)

        self.policy: Policy = build_policy(c, self.algorithm_class.model_keys)
        ckpt_norm = self._load_base_policy()
        self.policy.to(self.device)
        self.normalization = run_normalization(run, ckpt_norm)
        self.env = make_env(env_cfg, self.logdir, ckpt_norm, self.seed, run.robomimic_env_cfg_path)
        self.algorithm = self.algorithm_class.from_config(self.exp, self.policy, self.device)
        if self._dppo_base is not None:  # DPPO's fine-tuning checkpoint also carries its critics
            warm_start_critics(self.algorithm.modules, *self._dppo_base)
        if self._own_base is not None:  # so does one of ours (e.g. Cal-QL's offline run for its online stage)
            warm_start_modules(self.algorithm.modules, *self._own_base)
        threshold = env_cfg.best_reward_threshold_for_success
        self.episodes = EpisodeStats(self.n_envs, threshold, env_reports_success(env_cfg.name))
        self.success_threshold = threshold
        self.itr = 0
        self.env_steps = 0
        self.elapsed_s = 0.0  # iterations only
        self.wall_s = 0.0  # iterations and evaluations: what train.max_wall_min limits
        self._needs_reset = True
        self._reset_seed: int | None = None
        n_params = sum(p.numel() for p in self.algorithm.policy.parameters() if p.requires_grad)
        log.info("policy %s: %d trainable parameters", type(self.policy).__name__, n_params)
        self.setup()
        if self.resume_path is not None:
            self.load(self.resume_path)

    def _load_base_policy(self) -> dict[str, np.ndarray] | None:
        """Load `base_policy_path` into the policy (skipped when resuming); return its normalization stats."""
        base = self.run_cfg.base_policy_path
        source = self.resume_path or (find_checkpoint(base) if base else None)
        self._dppo_base: tuple[Mapping[str, Any], Path] | None = None
        self._own_base: tuple[Mapping[str, Any], Path] | None = None
        if source is None:
            log.info("no base_policy_path: training from a freshly initialised policy")
            return None
        ckpt = load_checkpoint(source, allow_pickle=self.run_cfg.allow_pickle)
        norm = ckpt.get("normalization")
        stats = {k: np.asarray(v) for k, v in norm.items()} if norm else None
        check_normalization(stats, self.run_cfg, f"the normalization stored in {source}")
        if self.resume_path is None:
            if is_dppo_checkpoint(ckpt) and "itr" in ckpt:
                self._dppo_base = (ckpt, Path(source))
            elif ckpt.get("kind") == "finetune" and isinstance(ckpt.get("algorithm"), Mapping):
                self._own_base = (ckpt["algorithm"].get("modules") or {}, Path(source))
            kind = load_policy_weights(self.policy, ckpt, self.cfg, Path(source))
            log.info("loaded %s weights from %s", "EMA" if kind == "pretrain" else "fine-tuned", source)
        else:  # checked before the envs start
            if ckpt.get("kind") != "finetune":
                raise DataError(
                    f"resume={source} is a {ckpt.get('kind', 'foreign')} checkpoint, not a fine-tuning one; pass it as "
                    "base_policy_path to start fine-tuning from it"
                )
            done = int(ckpt.get("itr", 0))
            if done >= self.n_train_itr:
                raise ConfigError(
                    f"resume={source}: that run already finished {done} iterations (train.n_train_itr="
                    f"{self.n_train_itr}); raise train.n_train_itr to train it further"
                )
        return stats

    def setup(self) -> None:
        """Build what the loop needs beyond env, policy and algorithm (buffers, scalers)."""

    # ---------------------------------------------------------------- checkpoints
    def extra_state(self) -> dict[str, Any]:
        """Loop-specific state to checkpoint (e.g. the reward scaler)."""
        return {}

    def load_extra_state(self, ckpt: Mapping[str, Any]) -> None:
        """Restore what `extra_state` saved."""

    def state(self) -> dict[str, Any]:
        return {
            "kind": "finetune",
            "itr": self.itr,
            "env_steps": self.env_steps,
            "elapsed_s": self.elapsed_s,
            "wall_s": self.wall_s,
            "ft_denoising_steps": self.policy.ft_denoising_steps,
            "model": self.policy.state_dict(),
            "algorithm": self.algorithm.state_dict(),
            **self.extra_state(),
            "rng": rng_state(),
            "config": OmegaConf.to_container(self.cfg),
            "normalization": self.normalization,
        }

    def save(self) -> Path:
        path = save_checkpoint(checkpoint_path(self.logdir, self.itr), self.state())
        log.info("saved %s", path)
        return path

    def load(self, path: str | Path) -> None:
        """Resume: weights, algorithm (optimisers, schedulers, critics), loop state and RNG states."""
        ckpt = load_checkpoint(path, map_location=self.device, allow_pickle=self.run_cfg.allow_pickle)
        if ckpt.get("kind") != "finetune":
            raise DataError(f"resume={path} is not a fine-tuning checkpoint")
        load_policy_weights(self.policy, ckpt, self.cfg, Path(path))
        self.algorithm.load_state_dict(ckpt["algorithm"])
        self.load_extra_state(ckpt)
        set_rng_state(ckpt["rng"])
        self.itr, self.env_steps = int(ckpt["itr"]), int(ckpt["env_steps"])
        self.elapsed_s = float(ckpt.get("elapsed_s", 0.0))
        self.wall_s = float(ckpt.get("wall_s", self.elapsed_s))
        # Envs cannot be checkpointed: start fresh episodes, seeded apart from the original run's first reset.
        self._needs_reset = True
        self._reset_seed = self.seed + 7919 * self.itr
        log.info("resumed from %s at iteration %d (%d env steps)", path, self.itr, self.env_steps)

    # ---------------------------------------------------------------- env handling
    def reset_envs(self) -> dict[str, np.ndarray]:
        """Reset every env and the episode bookkeeping; returns the first observations."""
        if self._reset_seed is not None:
            obs, _ = self.env.reset(seed=self._reset_seed)
            self._reset_seed = None
        else:
            obs, _ = self.env.reset()
        self.episodes.restart()
        self._needs_reset = False
        return obs

    # ---------------------------------------------------------------- hooks
    def evaluate(self) -> dict[str, float]:
        """Deterministic evaluation rollout on the training envs (reset before and after)."""
        t = self.train_cfg
        n_steps = t.eval_n_steps or t.n_steps
        n_episodes = t.eval_n_episodes
        options = {"video_prefix": f"eval_itr{self.itr:05d}"} if self.exp.env.save_video else None
        if self._reset_seed is not None:
            self.env.reset(seed=self._reset_seed)
            self._reset_seed = None
        self.policy.eval()
        result = run_episodes(
            self.env,
            self.policy,
            act_steps=self.act_steps,
            device=self.device,
            n_steps=n_steps,
            n_episodes=n_episodes,
            max_episode_steps=self.exp.env.max_episode_steps,
            success_threshold=self.success_threshold,
            reports_success=self.episodes.has_success,
            reset_options=options,
        )
        self._needs_reset = True
        return result

    def evaluations_on(self) -> bool:
        """Whether the run evaluates at all (`train.val_freq` set and not `train.force_train`)."""
        return bool(self.train_cfg.val_freq) and not self.train_cfg.force_train

    def should_evaluate(self) -> bool:
        if not self.evaluations_on():
            return False
        return self.itr % int(self.train_cfg.val_freq or 1) == 0 or self.itr == self.n_train_itr

    def budget_spent(self) -> str | None:
        """Why training should stop before `n_train_itr` (`train.max_env_steps`, `train.max_wall_min`), or None."""
        max_steps = self.train_cfg.max_env_steps
        if max_steps is not None and self.env_steps >= max_steps:
            return f"env-step budget reached ({self.env_steps} >= train.max_env_steps={max_steps})"
        max_min = self.train_cfg.max_wall_min
        if max_min is not None and self.wall_s >= 60.0 * max_min:
            return f"wall-time budget reached ({self.wall_s / 60:.1f} >= train.max_wall_min={max_min} min)"
        return None

    @abstractmethod
    def train_iteration(self) -> dict[str, float]:
        """One training iteration (collect + update); returns metrics without the `train/` prefix."""

    def check_finite(self, metrics: Mapping[str, Any]) -> None:
        """Stop (`DivergedError`) when iteration `self.itr`'s losses (under `train.nan_policy=stop`) or the
        weights are not finite; see the class docstring."""
        c = self.cfg
        lrs = ", ".join(
            f"train.{k}={v}" for k, v in c.train.items() if str(k).endswith("lr") and isinstance(v, (int, float))
        )
        where, causes = f"iteration {self.itr}", (lrs or "train.*_lr", "the observations or rewards")
        losses = non_finite_losses(metrics)
        if losses and check_nan_policy(self.train_cfg.nan_policy) == "stop":
            what = f"loss ({losses[0]}={metrics[losses[0]]})"
            raise diverged(what, where, self.logdir, *causes)
        modules = [("model", self.policy), *((f"algorithm.{k}", m) for k, m in self.algorithm.modules.items())]
        bad = non_finite_parameters(modules)
        if bad:
            raise diverged(f"weights ({bad[0]})", where, self.logdir, *causes)

    # ---------------------------------------------------------------- main loop
    def run(self) -> None:
        save_freq = self.train_cfg.save_model_freq
        log_freq = self.train_cfg.log_freq or 1
        bar = tqdm(total=self.n_train_itr, initial=self.itr, desc=self.progress_label, dynamic_ncols=True)
        last_eval_itr = -1
        try:
            stop = self.budget_spent()
            while self.itr < self.n_train_itr and stop is None:
                if self.should_evaluate():
                    self._log_eval()
                    last_eval_itr = self.itr
                start = time.perf_counter()
                self.algorithm.iteration = self.itr
                metrics = self.train_iteration()
                self.algorithm.end_iteration()
                self.itr += 1
                self.check_finite(metrics)
                iter_s = time.perf_counter() - start
                self.elapsed_s += iter_s
                self.wall_s += iter_s
                row = {f"train/{k}": v for k, v in metrics.items()}
                row.update({f"train/{k}": v for k, v in self.algorithm.learning_rates().items()})
                row["train/env_steps"] = self.env_steps
                row["time/iteration_s"] = iter_s
                row["time/elapsed_s"] = self.elapsed_s
                self.logger.log(row, step=self.itr, console=(self.itr % log_freq == 0))
                bar.update(1)
                if "episode_return" in metrics:
                    postfix = {"ret": f"{metrics['episode_return']:.3g}"}
                    if "success_rate" in metrics:
                        postfix["sr"] = f"{metrics['success_rate']:.2f}"
                    bar.set_postfix(postfix)
                stop = self.budget_spent()
                if self.itr % save_freq == 0 or self.itr == self.n_train_itr or stop is not None:
                    self.save()
            if stop is not None:
                log.info("stopping at iteration %d: %s", self.itr, stop)
            if self.evaluations_on() and last_eval_itr != self.itr:
                self._log_eval()
        finally:
            bar.close()
            self.env.close()
            self.logger.close()

    def _log_eval(self) -> None:
        start = time.perf_counter()
        result = self.evaluate()
        self.wall_s += time.perf_counter() - start
        self.logger.log({f"eval/{k}": v for k, v in result.items()}, step=self.itr)
