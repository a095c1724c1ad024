"""The replay loop: rollout -> ring buffer of transitions -> `algorithm.update(buffer)` (off-policy baselines).

Per training iteration:

1. Reset all envs if `env.reset_at_iteration` or after an evaluation / resume (otherwise continue the episodes in
   progress).
2. Collect `train.n_steps` chunks from each of the `env.n_envs` envs with stochastic sampling through
   `algorithm.act` (IDQL picks among candidates, DIPO samples its target actor; the others sample the policy) and
   store one transition per env and chunk: (s, a[:Te], r * `train.scale_reward_factor`, s', terminated, episode
   end). s' is the env's `final_obs`, i.e. the pre-reset observation where an episode ended (the truncation
   bootstrap). The live observation used for the next action is never overwritten (a deliberate fix,
   docs/algorithms.md#d12-live-observations: DPPO's QSM/IDQL wrote final_obs into it, so the first action of a
   new episode was chosen from the previous episode's last state).
3. `algorithm.update(buffer)`: by default `int(S * E / batch_size * replay_ratio)` gradient steps, each on a batch
   drawn uniformly with replacement from the whole buffer (`ReplayAlgorithm.gradient_step`); the actor trains once
   `n_critic_warmup_itr` iterations have passed. Target networks follow by Polyak averaging.

An algorithm subclasses `ReplayAlgorithm` and implements `from_config` and `gradient_step` (or overrides `update`
when it needs the whole buffer, like AWR), plus `act` when it selects actions differently. Environment stepping,
episode statistics, evaluation, checkpoints and logging are the shared loop's (`FinetuneAgent`).

`train.buffer_size` counts transitions (env steps x envs). DPPO counts individual transitions for DQL/DIPO but
per-step entries of all envs for QSM/IDQL/AWR; the configs here convert the latter (e.g. 25000 x 40 envs).

Also here: `ActorCriticAlgorithm`, the base of the baselines that learn critics beside the actor, and the double-Q
target and loss. The buffer is agent/finetune/replay_buffer.py; optimisers and target networks agent/optim.py; the
config checks every diffusion baseline shares agent/finetune/baselines.py.
"""

from __future__ import annotations

import logging
import time
from abc import abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from agent.config import require
from agent.finetune.base import Algorithm, Experiment, FinetuneAgent
from agent.finetune.replay_buffer import ReplayBuffer, Transitions
from agent.optim import OptimSettings, frozen_copy, make_optimizer
from agent.rollout import actions_to_numpy, cat_groups, obs_to_tensor, step_env_groups
from agent.schemas import ReplayTrain
from model.base import Policy, Sample
from model.diffusion.diffusion import DiffusionModel

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------------------
# the algorithm base


@dataclass
class ReplayConfig:
    """Hyper-parameters every replay algorithm reads (`train.*`, DPPO's names).

    Attributes:
        gamma: discount per action chunk.
        batch_size: transitions per gradient step.
        n_updates: gradient steps per iteration, int(n_steps * n_envs / batch_size * replay_ratio).
        n_critic_warmup_itr: iterations before the actor trains.
        tau: Polyak rate of the target networks (`critic_tau`, or DPPO's DQL/DIPO name `target_ema_rate`).
        max_grad_norm: clip the actor's gradient norm (None: off).
        act_steps: Te, the executed (and stored) chunk length.
    """

    gamma: float
    batch_size: int
    n_updates: int
    n_critic_warmup_itr: int
    tau: float
    max_grad_norm: float | None
    act_steps: int

    @classmethod
    def from_config(cls, exp: Experiment) -> ReplayConfig:
        """The settings of the typed `train` block (agent/schemas.py), `act_steps` and `env.n_envs`."""
        train = exp.train_as(ReplayTrain)
        return cls(
            gamma=train.gamma,
            batch_size=train.batch_size,
            n_updates=train.gradient_steps(exp.env.n_envs),
            n_critic_warmup_itr=train.n_critic_warmup_itr,
            tau=train.polyak_rate,
            max_grad_norm=train.max_grad_norm,
            act_steps=exp.act_steps,
        )

    @classmethod
    def validate(cls, exp: Experiment) -> None:
        """One-line errors for replay settings that do not fit the env count."""
        t, n_envs = exp.train_as(ReplayTrain), exp.env.n_envs
        require(
            t.buffer_size >= n_envs,
            f"train.buffer_size={t.buffer_size!r} must be an integer >= env.n_envs={n_envs} (it counts transitions)",
        )
        require(
            t.gradient_steps(n_envs) >= 1,
            f"n_steps * n_envs / batch_size * replay_ratio = {t.n_steps} * {n_envs} / {t.batch_size} * "
            f"{t.replay_ratio} < 1 gradient step per iteration; raise train.replay_ratio or lower train.batch_size",
        )


class ReplayAlgorithm(Algorithm):
    """Base of the off-policy update rules: action selection and a loop of gradient steps over the buffer.

    Subclasses set `self.cfg` (a ReplayConfig) and implement `gradient_step`; they may override `act` (how the
    loop picks actions, then also set `selects_actions`) and `update` (what one iteration's learning is).
    """

    cfg: ReplayConfig
    selects_actions: ClassVar[bool] = False
    """Whether `act` does more than sample the policy (IDQL's candidates, DIPO's target actor): evaluation of a
    checkpoint then rebuilds the algorithm to act (agent/eval.py)."""

    @torch.no_grad()
    def act(self, cond: dict[str, Tensor], deterministic: bool) -> Tensor:
        """Action chunks (B, Ta, Da) for a batch of observations; rollouts and evaluations call this."""
        return self.policy.sample(cond, deterministic=deterministic).actions

    @property
    def train_actor(self) -> bool:
        """Whether the critic warm-up (`n_critic_warmup_itr` iterations) is over."""
        return self.iteration >= self.cfg.n_critic_warmup_itr

    @abstractmethod
    def gradient_step(self, batch: Transitions, buffer: ReplayBuffer) -> dict[str, Tensor]:
        """One update on a batch; returns detached scalar diagnostics (summed and averaged by `update`)."""

    def sample_batch(self, buffer: ReplayBuffer) -> Transitions:
        """One gradient step's batch: `batch_size` transitions drawn uniformly from the buffer (RLPD mixes in
        offline data)."""
        return buffer.sample(self.cfg.batch_size)

    def update(self, buffer: ReplayBuffer) -> dict[str, float]:
        """`cfg.n_updates` gradient steps on batches from `sample_batch`; returns the mean diagnostics."""
        sums: dict[str, Tensor] = {}
        counts: dict[str, int] = {}
        for _ in range(self.cfg.n_updates):
            info = self.gradient_step(self.sample_batch(buffer), buffer)
            for key, value in info.items():
                sums[key] = sums.get(key, 0.0) + value.detach()
                counts[key] = counts.get(key, 0) + 1
        out = {key: float(v) / counts[key] for key, v in sums.items()}
        out["n_updates"] = self.cfg.n_updates
        return out

    def step_actor(self, loss: Tensor, params: list[nn.Parameter]) -> dict[str, Tensor]:
        """zero_grad, backward, optional grad-norm clip and step of the `actor` optimiser."""
        opt = self.optimizers["actor"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        info: dict[str, Tensor] = {}
        if self.cfg.max_grad_norm is not None:
            info["actor_grad_norm"] = torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
        opt.step()
        return info

    def step_optimizer(self, name: str, loss: Tensor) -> None:
        """zero_grad, backward and step of optimiser `name` (critics)."""
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


class ActorCriticAlgorithm(ReplayAlgorithm):
    """Base of the replay baselines that learn critics beside the actor (DQL, QSM, DIPO, IDQL, AWR): the actor's
    parameters and optimiser, the critics with their optimisers, and Polyak target copies of some of them.

    Args:
        policy: the DiffusionModel (whole network trained).
        critics: name -> critic module, stored in `modules[name]`, each with an optimiser `name` (critic settings).
        config: shared replay hyper-parameters.
        optim: {actor, critic} -> (lr, weight_decay, lr_scheduler block or None).
        targets: names of critics that get a frozen target copy `modules[<name>_target]` (Polyak-averaged).
        actor_modules: name -> module trained with the policy by the `actor` optimiser (FQL's one-step actor),
            stored in `modules[name]`.
    """

    policy: DiffusionModel  # the diffusion baselines fine-tune a whole diffusion policy (check_baseline_config)

    def __init__(
        self,
        policy: Policy,
        critics: Mapping[str, nn.Module],
        config: ReplayConfig,
        optim: Mapping[str, OptimSettings],
        targets: Iterable[str] = (),
        actor_modules: Mapping[str, nn.Module] | None = None,
    ) -> None:
        super().__init__(policy)
        self.cfg = config
        self.actor_params = list(policy.trainable_parameters())
        for name, module in (actor_modules or {}).items():
            self.modules[name] = module
            self.actor_params += list(module.parameters())
        self.optimizers["actor"], self.schedulers["actor"] = make_optimizer(self.actor_params, *optim["actor"])
        targets = set(targets)
        for name, critic in critics.items():
            self.modules[name] = critic
            if name in targets:
                self.modules[f"{name}_target"] = frozen_copy(critic)
            self.optimizers[name], self.schedulers[name] = make_optimizer(critic.parameters(), *optim["critic"])


def double_q_target(
    critic: nn.Module,
    next_obs: dict[str, Tensor],
    next_actions: Tensor,
    rewards: Tensor,
    terminated: Tensor,
    gamma: float,
) -> Tensor:
    """y = r + gamma (1 - terminated) min(Q1, Q2)(s', a') with no gradient. Returns (B,)."""
    with torch.no_grad():
        q1, q2 = critic(next_obs, next_actions)
        next_q = q1 if q2 is None else torch.minimum(q1, q2)
        return rewards + gamma * (1.0 - terminated) * next_q


def double_q_loss(critic: nn.Module, obs: dict[str, Tensor], actions: Tensor, target: Tensor) -> Tensor:
    """sum_i mean (Q_i(s, a) - y)^2 over the heads."""
    q1, q2 = critic(obs, actions)
    loss = (q1 - target).square().mean()
    if q2 is not None:
        loss = loss + (q2 - target).square().mean()
    return loss


# ------------------------------------------------------------------------------------------------------------------
# the loop


class ActingPolicy:
    """What evaluation rollouts see: `sample` routed through the algorithm's action selection (`act`)."""

    def __init__(self, algorithm: ReplayAlgorithm) -> None:
        self.algorithm = algorithm

    def eval(self) -> ActingPolicy:
        self.algorithm.policy.eval()
        return self

    def sample(self, cond: dict[str, Tensor], deterministic: bool = False, return_chain: bool = False) -> Sample:
        return Sample(actions=self.algorithm.act(cond, deterministic), chain=None)


class ReplayAgent(FinetuneAgent):
    """Off-policy fine-tuning (see the module docstring). Subclasses set `algorithm_class`.

    Config keys read here: train.{n_steps, buffer_size, scale_reward_factor, save_replay_buffer},
    env.reset_at_iteration, act_steps.
    """

    algorithm: ReplayAlgorithm

    def validate(self, cfg: DictConfig) -> None:
        super().validate(cfg)
        ReplayConfig.validate(self.exp)

    def setup(self) -> None:
        c = self.cfg
        self.n_steps = int(c.train.n_steps)
        t = cast(ReplayTrain, self.train_cfg)
        self.scale_reward = t.scale_reward_factor
        self.reset_at_iteration = self.exp.env.reset_at_iteration
        self.save_buffer = t.save_replay_buffer
        space = self.env.single_observation_space
        obs_spec = {
            key: (tuple(space[key].shape), torch.from_numpy(np.zeros(0, dtype=space[key].dtype)).dtype)
            for key in space.spaces
        }
        self.buffer = ReplayBuffer(
            int(c.train.buffer_size), self.n_envs, obs_spec, (self.act_steps, int(c.action_dim)), self.device
        )
        log.info(
            "replay buffer: %d transitions (%d steps x %d envs); %d gradient steps per iteration",
            self.buffer.capacity,
            self.buffer.n_slots,
            self.n_envs,
            self.algorithm.cfg.n_updates,
        )
        self._obs: dict[str, np.ndarray] | None = None

    def extra_state(self) -> dict[str, Any]:
        # The buffer can be large (up to 1e6 transitions): checkpointed only on request; a resumed run without it
        # refills it from fresh rollouts before its first update.
        return {"replay_buffer": self.buffer.state_dict() if self.save_buffer else None}

    def load_extra_state(self, ckpt: Mapping[str, Any]) -> None:
        saved = ckpt.get("replay_buffer")
        if saved is not None:
            self.buffer.load_state_dict(saved)
            log.info("restored %d replay transitions", len(self.buffer))
        elif self.save_buffer:
            log.warning("the checkpoint has no replay buffer; it refills from fresh rollouts")

    # ---------------------------------------------------------------- collection
    @torch.no_grad()
    def collect(self) -> dict[str, float]:
        """Add `n_steps` vector-env steps to the buffer; returns timing and the mean raw chunk reward."""
        device, buf = self.device, self.buffer
        if self._needs_reset or self.reset_at_iteration or self._obs is None:
            buf.mark_interrupted()
            self._obs = self.reset_envs()
        self.policy.eval()
        start = time.perf_counter()
        env_steps, reward_sum = 0, 0.0
        timing = {"env_s": 0.0}

        def act(group_obs: dict[str, np.ndarray]) -> tuple[np.ndarray, tuple[dict[str, Tensor], Tensor]]:
            cond = obs_to_tensor(group_obs, device)
            actions = self.algorithm.act(cond, deterministic=False)
            return actions_to_numpy(actions, self.act_steps), (cond, actions[:, : self.act_steps])

        steps = step_env_groups(self.env, self._obs, self.n_steps, act, timing)
        for chosen, (obs, reward, terminated, truncated, info) in steps:
            self._obs = obs
            cond, actions = cat_groups(chosen)
            done = terminated | truncated
            # s' is the env's final_obs: a fresh copy holding the pre-reset observation where an episode ended
            # (bootstrapping truncations); the live `obs` keeps the new episode's first observation.
            buf.add(
                cond,
                actions,
                torch.from_numpy(np.asarray(reward, dtype=np.float32)).to(device) * self.scale_reward,
                obs_to_tensor(info["final_obs"], device),
                torch.from_numpy(terminated).to(device),
                torch.from_numpy(done).to(device),
            )
            self.episodes.step(reward, done, info)
            reward_sum += float(np.sum(reward))
            env_steps += int(np.sum(info.get("chunk_steps", self.act_steps)))
        self.env_steps += env_steps
        return {
            "rollout_s": time.perf_counter() - start,
            "env_s": timing["env_s"],
            "rollout_env_steps": env_steps,
            "reward_mean": reward_sum / (self.n_steps * self.n_envs),
        }

    # ---------------------------------------------------------------- one iteration
    def train_iteration(self) -> dict[str, float]:
        timing = self.collect()
        stats = self.episodes.summary()
        start = time.perf_counter()
        self.policy.train()
        metrics = self.algorithm.update(self.buffer)
        update_s = time.perf_counter() - start
        total = timing["rollout_s"] + update_s
        return {
            **stats,
            **metrics,
            "reward_mean": timing["reward_mean"],
            "buffer_transitions": len(self.buffer),
            "env_steps_per_s": timing["rollout_env_steps"] / max(total, 1e-9),
            "rollout_s": timing["rollout_s"],
            "env_s": timing["env_s"],
            "update_s": update_s,
        }

    # ---------------------------------------------------------------- evaluation through the algorithm's selection
    def evaluate(self) -> dict[str, float]:
        # FinetuneAgent.evaluate rolls out `self.policy`; route it through `algorithm.act` (IDQL's candidate
        # selection, DIPO's target actor) for the duration of the evaluation.
        policy = self.policy
        self.policy = ActingPolicy(self.algorithm)  # type: ignore[assignment]
        try:
            return super().evaluate()
        finally:
            self.policy = policy


__all__ = [
    "ActingPolicy",
    "ActorCriticAlgorithm",
    "ReplayAgent",
    "ReplayAlgorithm",
    "ReplayConfig",
    "double_q_loss",
    "double_q_target",
]
