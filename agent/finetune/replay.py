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

Also here: the helpers the diffusion baselines share (optimiser + scheduler construction, Polyak averaging, the
per-sample diffusion loss, config checks).
"""

from __future__ import annotations

import copy
import logging
import time
from abc import abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from agent.config import require
from agent.finetune.base import (
    Algorithm,
    FinetuneAgent,
    actions_to_numpy,
    cat_groups,
    obs_to_tensor,
    step_env_groups,
)
from agent.pretrain import make_adamw
from agent.schedulers import CosineWarmupRestarts
from model.base import Sample

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------------------
# helpers shared by the diffusion baselines


def cfg_get(cfg: DictConfig, key: str, default: Any = None) -> Any:
    """`OmegaConf.select` with a default, converting containers to plain Python."""
    value = OmegaConf.select(cfg, key, default=default)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def make_optimizer(
    params: Iterable[nn.Parameter], lr: float, weight_decay: float, scheduler: Mapping[str, Any] | None
) -> tuple[torch.optim.Optimizer, CosineWarmupRestarts]:
    """AdamW and its per-iteration cosine schedule (`scheduler` None: constant lr).

    Args:
        params: parameters to optimise.
        lr: the (maximum) learning rate.
        weight_decay: AdamW weight decay.
        scheduler: DPPO's `*_lr_scheduler` block {first_cycle_steps, warmup_steps, min_lr}, or None.
    """
    opt = make_adamw(params, float(lr), float(weight_decay))
    kwargs = dict(scheduler) if scheduler else {"first_cycle_steps": 1, "warmup_steps": 0, "min_lr": lr}
    return opt, CosineWarmupRestarts(opt, **kwargs, max_lr=float(lr))


OptimSettings = tuple[float, float, "dict[str, Any] | None"]


def optimizer_settings(cfg: DictConfig, name: str) -> OptimSettings:
    """(lr, weight_decay, lr_scheduler block) of `train.<name>_lr` etc.; `name=""` reads `train.lr` etc. (RWR)."""
    prefix = f"train.{name}_" if name else "train."
    lr = cfg_get(cfg, f"{prefix}lr")
    require(lr is not None and lr > 0, f"{prefix}lr must be set to a value > 0, got {lr!r}")
    return float(lr), float(cfg_get(cfg, f"{prefix}weight_decay", 0.0)), cfg_get(cfg, f"{prefix}lr_scheduler")


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """theta' <- (1 - tau) theta' + tau theta for every parameter.

    Buffers are left alone: here they are the diffusion schedule's constants (no network has trained buffers such as
    batch-norm statistics), and copying them every gradient step would only cost time.
    """
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy with gradients off (target networks)."""
    return copy.deepcopy(module).requires_grad_(False)


def noisy_actions(policy: nn.Module, actions: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """Forward diffusion q(x_t | x_0): sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps.

    Args:
        policy: a DiffusionModel (its schedule buffers are used).
        actions: x_0, (B, Ta, Da).
        t: (B,) long timesteps in [0, K).
        noise: eps, (B, Ta, Da).
    """
    b = actions.shape[0]
    return (
        policy.sqrt_alphas_cumprod[t].view(b, 1, 1) * actions
        + policy.sqrt_one_minus_alphas_cumprod[t].view(b, 1, 1) * noise
    )


def diffusion_loss_per_sample(policy: nn.Module, actions: Tensor, cond: dict[str, Tensor]) -> Tensor:
    """The pretraining diffusion loss kept per sample, for reward/advantage weighting (RWR, AWR).

    A timestep t ~ U{0..K-1} and noise eps per sample; mean over (Ta, Da) of (eps_theta(x_t, t, s) - eps)^2 (or of
    the x_0 error without epsilon prediction). `policy.loss` is the mean of this over the batch.

    Args:
        policy: a DiffusionModel.
        actions: (B, Ta, Da) action chunks (x_0).
        cond: observation dict with batch size B.

    Returns:
        (B,) losses.
    """
    b = actions.shape[0]
    t = torch.randint(0, policy.denoising_steps, (b,), device=actions.device)
    noise = torch.randn_like(actions)
    pred = policy.trainable_network(noisy_actions(policy, actions, t, noise), t, cond)
    target = noise if policy.predict_epsilon else actions
    return (pred - target).square().mean(dim=(1, 2))


def check_baseline_config(cfg: DictConfig, schedulers: Iterable[str], *, needs_te_chunks: bool = True) -> None:
    """Checks every diffusion baseline shares: whole-network fine-tuning, Ta = Te, warm-up, lr schedules.

    Args:
        cfg: the full config.
        schedulers: names of the `train.<name>_lr_scheduler` / `train.lr_scheduler` blocks to check.
        needs_te_chunks: the algorithm stores or scores Te-step chunks with networks that expect Ta steps.
    """
    k_ft = cfg_get(cfg, "model.ft_denoising_steps", cfg_get(cfg, "ft_denoising_steps", 0))
    require(
        not k_ft,
        f"ft_denoising_steps={k_ft}: the diffusion baselines fine-tune the whole network (no frozen copy); "
        "set ft_denoising_steps=0",
    )
    horizon, act = cfg_get(cfg, "horizon_steps"), cfg_get(cfg, "act_steps")
    require(
        not needs_te_chunks or horizon == act,
        f"horizon_steps={horizon} but act_steps={act}: this baseline stores and scores executed (act_steps) chunks "
        f"with networks that take horizon_steps; set horizon_steps=act_steps={act} (and pretrain with it)",
    )
    require(
        cfg_get(cfg, "model._target_", "").endswith("DiffusionModel"),
        f"model._target_={cfg_get(cfg, 'model._target_')}: the diffusion baselines need a DiffusionModel policy",
    )
    gamma = cfg_get(cfg, "train.gamma", 0.99)
    require(0.0 < gamma <= 1.0, f"train.gamma must be in (0, 1], got {gamma}")
    warm = cfg_get(cfg, "train.n_critic_warmup_itr", 0)
    require(isinstance(warm, int) and warm >= 0, f"train.n_critic_warmup_itr must be an integer >= 0, got {warm!r}")
    for name in schedulers:
        key = f"train.{name}_lr_scheduler" if name else "train.lr_scheduler"
        sched = cfg_get(cfg, key)
        if sched is None:
            continue
        cycle, warmup = sched.get("first_cycle_steps", 1), sched.get("warmup_steps", 0)
        require(
            isinstance(cycle, int) and cycle >= 1 and isinstance(warmup, int) and 0 <= warmup < cycle,
            f"{key}: warmup_steps={warmup} must be in [0, first_cycle_steps={cycle})",
        )


# ------------------------------------------------------------------------------------------------------------------
# the replay buffer


class Transitions(NamedTuple):
    """A batch of B transitions.

    Attributes:
        obs: observation dict, each (B, ...) (`state` (B, To, Do)).
        actions: (B, Te, Da) executed chunks.
        rewards: (B,) chunk rewards times scale_reward_factor.
        next_obs: observation dict after the chunk (the pre-reset observation where the episode ended).
        terminated: (B,) float, 1 where s' is terminal (no bootstrap).
        indices: (B,) long, the rows' flat buffer indices (for writing actions back, or gathering targets).
    """

    obs: dict[str, Tensor]
    actions: Tensor
    rewards: Tensor
    next_obs: dict[str, Tensor]
    terminated: Tensor
    indices: Tensor


class ReplayBuffer:
    """Preallocated ring buffer of transitions, step-major: every tensor has leading shape (C, E).

    C = capacity // E steps of E envs; once full, the oldest step is overwritten. Step-major storage keeps each
    env's transitions in time order, which TD(lambda) over the buffer (AWR) needs; flat index i = step * E + env.

    Args:
        capacity: maximum number of transitions (`train.buffer_size`), at least E.
        n_envs: E.
        obs_spec: key -> (per-env shape, dtype), e.g. {"state": ((To, Do), torch.float32)}.
        action_shape: (Te, Da).
        device: storage device.
    """

    def __init__(
        self,
        capacity: int,
        n_envs: int,
        obs_spec: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
        action_shape: tuple[int, int],
        device: torch.device | str = "cpu",
    ) -> None:
        if capacity < n_envs:
            raise ValueError(f"buffer capacity {capacity} is smaller than one step of {n_envs} envs")
        self.n_envs = int(n_envs)
        self.n_slots = int(capacity) // self.n_envs
        self.device = torch.device(device)
        ce = (self.n_slots, self.n_envs)
        kw = {"device": self.device}
        self.obs = {k: torch.zeros(*ce, *shape, dtype=dtype, **kw) for k, (shape, dtype) in obs_spec.items()}
        self.next_obs = {k: torch.zeros_like(v) for k, v in self.obs.items()}
        self.actions = torch.zeros(*ce, *action_shape, **kw)
        self.rewards = torch.zeros(ce, **kw)
        self.terminated = torch.zeros(ce, **kw)
        # The row's successor in time (same env, next slot) is not the same episode: terminated, truncated, or
        # the envs were reset after it. TD(lambda) stops accumulating there.
        self.episode_end = torch.zeros(ce, dtype=torch.bool, **kw)
        self.pos = 0  # next slot to write
        self.n_filled = 0  # filled slots

    def __len__(self) -> int:
        """Number of stored transitions."""
        return self.n_filled * self.n_envs

    @property
    def capacity(self) -> int:
        return self.n_slots * self.n_envs

    def add(
        self,
        obs: Mapping[str, Tensor],
        actions: Tensor,
        rewards: Tensor,
        next_obs: Mapping[str, Tensor],
        terminated: Tensor,
        episode_end: Tensor,
    ) -> None:
        """Store one vector-env step (E transitions), overwriting the oldest when full.

        Args:
            obs, next_obs: dicts of (E, ...) tensors.
            actions: (E, Te, Da).
            rewards: (E,) scaled rewards.
            terminated: (E,) bool.
            episode_end: (E,) bool, terminated | truncated.
        """
        i = self.pos
        for key, value in obs.items():
            self.obs[key][i].copy_(value)
            self.next_obs[key][i].copy_(next_obs[key])
        self.actions[i].copy_(actions)
        self.rewards[i].copy_(rewards)
        self.terminated[i].copy_(terminated)
        self.episode_end[i].copy_(episode_end)
        self.pos = (i + 1) % self.n_slots
        self.n_filled = min(self.n_filled + 1, self.n_slots)

    def mark_interrupted(self) -> None:
        """The envs are being reset mid-episode: the newest step's successors belong to new episodes."""
        if self.n_filled:
            self.episode_end[(self.pos - 1) % self.n_slots] = True

    def flat(self, tensor: Tensor) -> Tensor:
        """(C, E, ...) storage -> (C * E, ...) view (flat index = slot * E + env)."""
        return tensor.view(self.n_slots * self.n_envs, *tensor.shape[2:])

    def sample_indices(self, batch_size: int) -> Tensor:
        """(batch_size,) flat indices drawn uniformly with replacement from the stored transitions."""
        if not self.n_filled:
            raise RuntimeError("sampling from an empty replay buffer")
        return torch.randint(0, len(self), (batch_size,), device=self.device)

    def obs_at(self, indices: Tensor) -> dict[str, Tensor]:
        """The observations s at flat `indices` (B,), each (B, ...)."""
        return {k: self.flat(v)[indices] for k, v in self.obs.items()}

    def gather(self, indices: Tensor) -> Transitions:
        """The transitions at flat `indices` (B,)."""
        return Transitions(
            obs=self.obs_at(indices),
            actions=self.flat(self.actions)[indices],
            rewards=self.flat(self.rewards)[indices],
            next_obs={k: self.flat(v)[indices] for k, v in self.next_obs.items()},
            terminated=self.flat(self.terminated)[indices],
            indices=indices,
        )

    def sample(self, batch_size: int) -> Transitions:
        """A batch drawn uniformly with replacement from the whole buffer."""
        return self.gather(self.sample_indices(batch_size))

    def set_actions(self, indices: Tensor, actions: Tensor) -> None:
        """Overwrite the stored actions at flat `indices` (B,) with `actions` (B, Te, Da) (DIPO)."""
        self.flat(self.actions)[indices] = actions.to(self.actions.dtype)

    def time_order(self) -> Tensor:
        """(n_filled,) slot indices from the oldest stored step to the newest."""
        slots = torch.arange(self.n_filled, device=self.device)
        if self.n_filled < self.n_slots:
            return slots
        return (slots + self.pos) % self.n_slots

    def state_dict(self) -> dict[str, Any]:
        """The filled part of the buffer (for checkpoints)."""
        n = self.n_filled
        return {
            "pos": self.pos,
            "n_filled": n,
            "obs": {k: v[:n].cpu() for k, v in self.obs.items()},
            "next_obs": {k: v[:n].cpu() for k, v in self.next_obs.items()},
            "actions": self.actions[:n].cpu(),
            "rewards": self.rewards[:n].cpu(),
            "terminated": self.terminated[:n].cpu(),
            "episode_end": self.episode_end[:n].cpu(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        n = int(state["n_filled"])
        if n > self.n_slots or state["actions"].shape[1:] != self.actions.shape[1:]:
            raise ValueError(
                f"saved replay buffer ({n} steps of {tuple(state['actions'].shape[1:])}) does not fit this one "
                f"({self.n_slots} steps of {tuple(self.actions.shape[1:])})"
            )
        for key in self.obs:
            self.obs[key][:n].copy_(state["obs"][key])
            self.next_obs[key][:n].copy_(state["next_obs"][key])
        for name in ("actions", "rewards", "terminated", "episode_end"):
            getattr(self, name)[:n].copy_(state[name])
        self.n_filled = n
        self.pos = int(state["pos"]) % self.n_slots


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

    @staticmethod
    def n_gradient_steps(cfg: DictConfig) -> int:
        """int(S * E / batch_size * replay_ratio), the reference's num_batch."""
        s, e = int(cfg.train.n_steps), int(cfg.env.n_envs)
        return int(s * e / int(cfg.train.batch_size) * float(cfg_get(cfg, "train.replay_ratio", 1)))

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> ReplayConfig:
        tau = cfg_get(cfg, "train.critic_tau", None)
        return cls(
            gamma=float(cfg_get(cfg, "train.gamma", 0.99)),
            batch_size=int(cfg.train.batch_size),
            n_updates=cls.n_gradient_steps(cfg),
            n_critic_warmup_itr=int(cfg_get(cfg, "train.n_critic_warmup_itr", 0)),
            tau=float(tau if tau is not None else cfg_get(cfg, "train.target_ema_rate", 0.005)),
            max_grad_norm=cfg_get(cfg, "train.max_grad_norm", None),
            act_steps=int(cfg.act_steps),
        )

    @classmethod
    def validate(cls, cfg: DictConfig) -> None:
        """One-line errors for impossible replay settings."""
        get = lambda key, default=None: cfg_get(cfg, key, default)  # noqa: E731
        size, bs, ratio = get("train.buffer_size"), get("train.batch_size"), get("train.replay_ratio")
        n_envs = get("env.n_envs")
        require(
            isinstance(size, int) and size >= n_envs,
            f"train.buffer_size={size!r} must be an integer >= env.n_envs={n_envs} (it counts transitions)",
        )
        require(isinstance(bs, int) and bs >= 1, f"train.batch_size must be an integer >= 1, got {bs!r}")
        require(isinstance(ratio, (int, float)) and ratio > 0, f"train.replay_ratio must be > 0, got {ratio!r}")
        n = cls.n_gradient_steps(cfg)
        require(
            n >= 1,
            f"n_steps * n_envs / batch_size * replay_ratio = {get('train.n_steps')} * {n_envs} / {bs} * {ratio} "
            "< 1 gradient step per iteration; raise train.replay_ratio or lower train.batch_size",
        )
        for key in ("train.critic_tau", "train.target_ema_rate"):
            tau = get(key)
            require(tau is None or 0.0 < tau <= 1.0, f"{key} must be in (0, 1], got {tau}")
        scale = get("train.scale_reward_factor", 1.0)
        require(isinstance(scale, (int, float)) and scale > 0, f"train.scale_reward_factor must be > 0, got {scale}")


class ReplayAlgorithm(Algorithm):
    """Base of the off-policy update rules: action selection and a loop of gradient steps over the buffer.

    Subclasses set `self.cfg` (a ReplayConfig) and implement `gradient_step`; they may override `act` (how the
    loop picks actions) and `update` (what one iteration's learning is).
    """

    cfg: ReplayConfig

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

    def update(self, buffer: ReplayBuffer) -> dict[str, float]:
        """`cfg.n_updates` gradient steps on uniform batches; returns the mean diagnostics."""
        sums: dict[str, Tensor] = {}
        counts: dict[str, int] = {}
        for _ in range(self.cfg.n_updates):
            info = self.gradient_step(buffer.sample(self.cfg.batch_size), buffer)
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
        ReplayConfig.validate(cfg)

    def setup(self) -> None:
        c = self.cfg
        self.n_steps = int(c.train.n_steps)
        self.scale_reward = float(cfg_get(c, "train.scale_reward_factor", 1.0))
        self.reset_at_iteration = bool(cfg_get(c, "env.reset_at_iteration", True))
        self.save_buffer = bool(cfg_get(c, "train.save_replay_buffer", False))
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
    "ReplayAgent",
    "ReplayAlgorithm",
    "ReplayBuffer",
    "ReplayConfig",
    "Transitions",
    "check_baseline_config",
    "diffusion_loss_per_sample",
    "double_q_loss",
    "double_q_target",
    "frozen_copy",
    "make_optimizer",
    "optimizer_settings",
    "noisy_actions",
    "polyak_update",
]
