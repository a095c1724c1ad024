"""PPO over the denoising chain (DPPO), also plain PPO for Gaussian/GMM policies.

The mathematics: docs/algorithms.md#ppo-over-the-denoising-chain.

A row of a minibatch is one (env step n, denoising step k) pair: the transition chain[n, k] -> chain[n, k+1]
scored under the fine-tuned network. Gaussian and GMM policies have a chain of length one (k = 0, the action),
so the same code is PPO for them (docs/algorithms.md#gaussian-and-gmm-ppo).

Loss per minibatch (docs/algorithms.md#ppo-loss):

    l_new, l_old   element-wise log-probs, clamped to [-5, 2], first `reward_horizon` action steps, mean -> (B,)
    A              advantages, normalised with minibatch statistics (norm_adv), optionally quantile-clipped,
                   times the denoising discount gamma_d^(K' - k - 1)
    r              exp(l_new - l_old)
    eps_k          eps_base + (eps - eps_base) (exp(rho u) - 1) / (exp(rho) - 1),  u = k / (K' - 1)
    pg_loss        mean max(-A r, -A clip(r, 1 - eps_k, 1 + eps_k))
    v_loss         0.5 mean (V - R)^2, or the clipped form with clip_vloss_coef
    loss           pg_loss + ent_coef * (-entropy) + vf_coef * v_loss + bc_loss_coeff * bc_loss

Deliberate differences from DPPO (docs/algorithms.md#deliberate-differences-from-dppo):

* K' = 1 (D1): u = 0/0 gave a NaN loss; here u = 1, i.e. the single fine-tuned step is the final one and
  gets eps = clip_ploss_coef (which is also what DPPO's Gaussian PPO uses).
* The denoising discounts and clip coefficients are gathered from (K',) tables by k (no Python loop).
* Old log-probs are stored per transition already reduced to the scalar the loss uses (mathematically identical).
* During the critic warm-up (`n_critic_warmup_itr`) the actor is not updated, so its loss is not computed either
  (DPPO computes and discards it); the KL early stop only applies once the actor trains (D16).
* The policy is in eval mode during the update (no in-network augmentation or dropout; see `PPO.update`). Pixel
  runs instead augment the stored images once after the rollout (`train.augment`, D18).
* `train.grad_accumulate` = g (D17): the optimisers step on the mean gradient of g minibatches; a partial
  group at the end of an epoch is stepped rather than carried into the next epoch (see `PPO._update`).
* On CPU the actor's backward pass runs over row chunks of the minibatch (`train.update_chunk_rows`, see
  `PPO.backward`): the same gradient, about a third faster than one pass over 50,000 rows.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple, cast

import torch
from torch import Tensor, nn

from agent.config import instantiate, require
from agent.finetune.base import Experiment
from agent.finetune.buffer import RolloutBuffer
from agent.finetune.onpolicy import OnPolicyAgent, OnPolicyAlgorithm
from agent.optim import make_optimizer
from agent.schemas import LrScheduler, PPOModel, PPOTrain
from model.base import Policy

log = logging.getLogger(__name__)

LOGPROB_MIN, LOGPROB_MAX = -5.0, 2.0


def clip_coefficients(n_steps: int, clip: float, clip_base: float, rate: float) -> Tensor:
    """Per-denoising-step PPO clip coefficients eps_k, k = 0 (noisiest fine-tuned step) .. K'-1 (final step).

    eps_k = eps_base + (eps - eps_base) * (exp(rate * u_k) - 1) / (exp(rate) - 1), u_k = k / (K' - 1).
    With K' = 1, u = 1 (docs/algorithms.md#d1-single-step-clipping; DPPO gave NaN); with rate = 0 the limit, a
    linear ramp.

    Returns:
        (K',) float32.
    """
    if n_steps == 1:
        u = torch.ones(1, dtype=torch.float64)
    else:
        u = torch.arange(n_steps, dtype=torch.float64) / (n_steps - 1)
    shape = u if rate == 0 else torch.expm1(rate * u) / math.expm1(rate)
    return (clip_base + (clip - clip_base) * shape).float()


def denoising_discounts(n_steps: int, gamma_denoising: float) -> Tensor:
    """gamma_d^(K' - k - 1) for k = 0 .. K'-1: the final denoising step gets 1. Returns (K',) float32."""
    exponents = torch.arange(n_steps - 1, -1, -1, dtype=torch.float64)
    return (gamma_denoising**exponents).float()


def reduce_log_prob(log_prob: Tensor, horizon: int) -> Tensor:
    """Element-wise log-probs (..., Ta, Da) -> clamp to [-5, 2], keep the first `horizon` steps, mean -> (...)."""
    return log_prob.clamp(LOGPROB_MIN, LOGPROB_MAX)[..., :horizon, :].mean(dim=(-2, -1))


class Minibatch(NamedTuple):
    """B rows of (env step, denoising step) pairs.

    Attributes:
        cond: observation dict, each (B, ...).
        chains: (B, K'+1, Ta, Da) the rows' whole chains.
        step: (B,) long, the denoising step k of each row.
        returns: (B,) GAE returns.
        old_values: (B,) V(s) before the update.
        advantages: (B,) raw GAE advantages.
        old_log_probs: (B,) reduced old log-probs of transition k.
        critic_cond: the distinct observations among the rows (U <= B), or None when every row's is distinct.
        critic_index: (B,) long, row b's observation is `critic_cond[critic_index[b]]` (None with critic_cond).
    """

    cond: dict[str, Tensor]
    chains: Tensor
    step: Tensor
    returns: Tensor
    old_values: Tensor
    advantages: Tensor
    old_log_probs: Tensor
    critic_cond: dict[str, Tensor] | None = None
    critic_index: Tensor | None = None


@dataclass
class PPOConfig:
    """PPO hyper-parameters, under DPPO's config names (train.* unless noted model.*)."""

    # train.*: the defaults are PPOTrain's (agent/schemas.py); a schedule left None is a constant learning rate
    batch_size: int = PPOTrain.batch_size
    update_epochs: int = PPOTrain.update_epochs
    logprob_batch_size: int = PPOTrain.logprob_batch_size
    vf_coef: float = PPOTrain.vf_coef
    ent_coef: float = PPOTrain.ent_coef
    target_kl: float | None = PPOTrain.target_kl
    max_grad_norm: float | None = PPOTrain.max_grad_norm
    n_critic_warmup_itr: int = PPOTrain.n_critic_warmup_itr
    use_bc_loss: bool = PPOTrain.use_bc_loss
    bc_loss_coeff: float = PPOTrain.bc_loss_coeff
    actor_lr: float = PPOTrain.actor_lr
    actor_weight_decay: float = PPOTrain.actor_weight_decay
    actor_lr_scheduler: dict[str, Any] | None = None
    critic_lr: float = PPOTrain.critic_lr
    critic_weight_decay: float = PPOTrain.critic_weight_decay
    critic_lr_scheduler: dict[str, Any] | None = None
    eta_lr: float = PPOTrain.eta_lr
    eta_weight_decay: float = PPOTrain.eta_weight_decay
    eta_lr_scheduler: dict[str, Any] | None = None
    eta_update_interval: int = PPOTrain.eta_update_interval
    grad_accumulate: int = PPOTrain.grad_accumulate
    update_chunk_rows: int | None = PPOTrain.update_chunk_rows
    # model.*: the defaults are PPOModel's
    gamma_denoising: float = PPOModel.gamma_denoising
    clip_ploss_coef: float = PPOModel.clip_ploss_coef
    clip_ploss_coef_base: float = PPOModel.clip_ploss_coef_base
    clip_ploss_coef_rate: float = PPOModel.clip_ploss_coef_rate
    clip_vloss_coef: float | None = PPOModel.clip_vloss_coef
    clip_advantage_lower_quantile: float = PPOModel.clip_advantage_lower_quantile
    clip_advantage_upper_quantile: float = PPOModel.clip_advantage_upper_quantile
    norm_adv: bool = PPOModel.norm_adv
    # top level
    reward_horizon: int = 4

    TRAIN_KEYS = (
        "batch_size", "update_epochs", "logprob_batch_size", "vf_coef", "ent_coef", "target_kl", "max_grad_norm",
        "n_critic_warmup_itr", "use_bc_loss", "bc_loss_coeff", "actor_lr", "actor_weight_decay",
        "actor_lr_scheduler", "critic_lr", "critic_weight_decay", "critic_lr_scheduler", "eta_lr",
        "eta_weight_decay", "eta_lr_scheduler", "eta_update_interval", "grad_accumulate", "update_chunk_rows",
    )  # fmt: skip
    """The keys taken from the typed `train` block (PPOTrain)."""
    MODEL_KEYS = tuple(f.name for f in fields(PPOModel))
    """The keys taken from the `model` block (PPOModel)."""

    @classmethod
    def build(cls, train: PPOTrain, model: PPOModel, reward_horizon: int) -> PPOConfig:
        """From the typed `train` block, PPO's `model` keys and the reward horizon (reward_horizon, else act_steps)."""
        kwargs: dict[str, Any] = {}
        for key in cls.TRAIN_KEYS:
            value = getattr(train, key)
            kwargs[key] = asdict(value) if isinstance(value, LrScheduler) else value
        kwargs.update(asdict(model))
        return cls(**kwargs, reward_horizon=reward_horizon)


class PPO(OnPolicyAlgorithm):
    """PPO over (env step x denoising step) pairs; see the module docstring for the loss.

    Args:
        policy: a policy with `chain_log_prob`, `trainable_parameters`, `n_chain_steps` (diffusion, Gaussian, GMM).
        critic: V(s) module `cond -> (B,)`.
        config: hyper-parameters.
    """

    train_schema = PPOTrain
    model_schema = PPOModel

    model_keys = frozenset({"critic", *PPOConfig.MODEL_KEYS})

    critic: nn.Module  # PPO always has its value critic

    def __init__(self, policy: Policy, critic: nn.Module, config: PPOConfig) -> None:
        super().__init__(policy)
        self.critic = critic
        self.cfg = config
        self.n_chain_steps = int(policy.n_chain_steps)
        device = next(critic.parameters()).device
        self.clip_coefs = clip_coefficients(
            self.n_chain_steps,
            config.clip_ploss_coef,
            config.clip_ploss_coef_base,
            config.clip_ploss_coef_rate,
        ).to(device)
        self.discounts = denoising_discounts(self.n_chain_steps, config.gamma_denoising).to(device)

        self.eta_params = policy.eta_parameters()
        eta_ids = {id(p) for p in self.eta_params}
        self.actor_params = [p for p in policy.trainable_parameters() if id(p) not in eta_ids]
        c = config
        self.modules["critic"] = critic
        self.optimizers["actor"], self.schedulers["actor"] = make_optimizer(
            self.actor_params, c.actor_lr, c.actor_weight_decay, c.actor_lr_scheduler
        )
        self.optimizers["critic"], self.schedulers["critic"] = make_optimizer(
            critic.parameters(), c.critic_lr, c.critic_weight_decay, c.critic_lr_scheduler
        )
        if self.eta_params:
            self.optimizers["eta"], self.schedulers["eta"] = make_optimizer(
                self.eta_params, c.eta_lr, c.eta_weight_decay, c.eta_lr_scheduler
            )
        # The BC regulariser samples chains from the pretrained policy: diffusion keeps it as the frozen `network`
        # (sample(use_base_policy=True)); Gaussian/GMM get a frozen copy, checkpointed with the algorithm.
        self._sample_uses_base = policy.has_base_policy
        if c.use_bc_loss and not self._sample_uses_base:
            self.modules["bc_reference"] = copy.deepcopy(policy).requires_grad_(False).eval()

    # ---------------------------------------------------------------- construction from the config
    @classmethod
    def validate_config(cls, exp: Experiment) -> None:
        require(exp.model_node("critic") is not None, "PPO needs a critic: set model.critic (e.g. CriticObs)")
        k = exp.model_node("ft_denoising_steps")
        k = 1 if k is None else k
        require(
            isinstance(k, int) and k >= 1,
            f"ft_denoising_steps={k}: PPO fine-tuning needs at least one fine-tuned denoising step",
        )
        t = exp.train_as(PPOTrain)
        rows = t.n_steps * exp.env.n_envs * k
        bs = t.batch_size
        if bs > rows:  # as the reference: one minibatch of every row (a tiny smoke run, a chain of length one)
            log.warning(
                "train.batch_size=%d is larger than one rollout's %d (env step x denoising step) rows "
                "(n_steps * n_envs * fine-tuned steps); each epoch uses one minibatch of all %d rows",
                bs,
                rows,
                rows,
            )
        model: PPOModel = exp.model
        require(bs >= 2 or not model.norm_adv, "train.batch_size must be >= 2 to normalise advantages")
        horizon, chunk = cls.reward_horizon(exp), exp.run.horizon_steps
        require(
            chunk is None or 1 <= horizon <= chunk,
            f"reward_horizon={horizon} must be in [1, horizon_steps={chunk}]",
        )

    @staticmethod
    def reward_horizon(exp: Experiment) -> int:
        """The executed actions whose log-probability counts: `reward_horizon`, else act_steps."""
        return exp.run.reward_horizon or exp.act_steps

    @classmethod
    def from_config(cls, exp: Experiment, policy: Policy, device: torch.device) -> PPO:
        critic = instantiate(exp.model_node("critic"), "model.critic").to(device)
        return cls(policy, critic, PPOConfig.build(exp.train_as(PPOTrain), exp.model, cls.reward_horizon(exp)))

    # ---------------------------------------------------------------- the loss
    def policy_log_prob(self, mb: Minibatch) -> Tensor:
        """Reduced log-prob (B,) of each row's transition under the current parameters."""
        lp = self.policy.chain_log_prob(mb.cond, mb.chains, mb.step)
        return reduce_log_prob(lp, self.cfg.reward_horizon)

    def bc_loss(self, cond: dict[str, Tensor]) -> Tensor:
        """-mean log-prob of chains sampled from the pretrained policy, under the fine-tuned one.

        See docs/algorithms.md#entropy-and-bc-terms.
        """
        with torch.no_grad():
            if self._sample_uses_base:
                chain = self.policy.sample(cond, deterministic=False, return_chain=True, use_base_policy=True).chain
            else:
                reference = cast(Policy, self.modules["bc_reference"])
                chain = reference.sample(cond, deterministic=False, return_chain=True).chain
            assert chain is not None  # return_chain=True
        lp = self.policy.chain_log_prob(cond, chain).clamp(LOGPROB_MIN, LOGPROB_MAX)  # (B, K', Ta, Da)
        return -lp.mean()

    def critic_loss(self, mb: Minibatch) -> Tensor:
        """0.5 mean (V - R)^2 over the minibatch's rows, or its clipped form with `clip_vloss_coef`."""
        c = self.cfg
        if mb.critic_index is not None:
            # V(s) once per distinct state, gathered per row: the same values and gradients as one critic pass per
            # row (the reference's), with about half the critic work when K' = 10.
            values = self.critic(mb.critic_cond)[mb.critic_index]
        else:
            values = self.critic(mb.cond)
        if c.clip_vloss_coef is None:
            return 0.5 * ((values - mb.returns) ** 2).mean()
        clipped = mb.old_values + (values - mb.old_values).clamp(-c.clip_vloss_coef, c.clip_vloss_coef)
        return 0.5 * torch.maximum((values - mb.returns) ** 2, (clipped - mb.returns) ** 2).mean()

    def actor_advantages(self, mb: Minibatch) -> Tensor:
        """The advantages the policy loss weighs (B,): normalised with the minibatch's statistics (`norm_adv`),
        quantile-clipped, times the denoising discount of each row's step."""
        c = self.cfg
        adv = mb.advantages
        if c.norm_adv:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        if c.clip_advantage_lower_quantile > 0 or c.clip_advantage_upper_quantile < 1:
            lo = torch.quantile(adv, c.clip_advantage_lower_quantile)
            hi = torch.quantile(adv, c.clip_advantage_upper_quantile)
            adv = adv.clamp(lo, hi)
        return adv * self.discounts[mb.step]

    def actor_loss(self, mb: Minibatch, adv: Tensor, n_rows: int) -> tuple[Tensor, dict[str, Tensor]]:
        """The rows' share of the actor's loss: pg_loss - ent_coef * entropy + bc_loss_coeff * bc_loss, each a sum
        over these rows divided by `n_rows`, so that the shares of a minibatch's row chunks add up to its means.

        Args:
            mb: b rows of a minibatch of `n_rows` rows.
            adv: (b,) their `actor_advantages` (computed over the whole minibatch).
            n_rows: rows of the whole minibatch.

        Returns:
            (the share, detached diagnostics as shares of the minibatch means).
        """
        c = self.cfg
        share = len(mb.step) / n_rows
        info: dict[str, Tensor] = {}
        log_ratio = self.policy_log_prob(mb) - mb.old_log_probs
        ratio = log_ratio.exp()
        eps = self.clip_coefs[mb.step]
        pg_loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - eps, 1.0 + eps)).sum() / n_rows
        total = pg_loss
        if c.ent_coef != 0.0:
            entropy = self.policy.entropy(mb.cond)
            if entropy is not None:
                total = total - c.ent_coef * entropy.sum() / n_rows
                info["entropy"] = entropy.detach().sum() / n_rows
        if c.use_bc_loss:
            bc = self.bc_loss(mb.cond) * share
            total = total + c.bc_loss_coeff * bc
            info["bc_loss"] = bc.detach()
        with torch.no_grad():
            info["pg_loss"] = pg_loss.detach()
            info["approx_kl"] = ((ratio - 1.0) - log_ratio).sum() / n_rows
            info["clip_frac"] = ((ratio - 1.0).abs() > eps).float().sum() / n_rows
            info["ratio"] = ratio.sum() / n_rows
        return total, info

    def loss(self, mb: Minibatch, train_actor: bool = True) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss of a minibatch and detached diagnostics (pg_loss, v_loss, approx_kl, clip_frac, ratio, ...)."""
        v_loss = self.critic_loss(mb)
        info = {"v_loss": v_loss.detach()}
        total = self.cfg.vf_coef * v_loss
        if train_actor:
            actor, actor_info = self.actor_loss(mb, self.actor_advantages(mb), len(mb.step))
            total = total + actor
            info.update(actor_info)
        return total, info

    def chunk_rows(self, device: torch.device) -> int | None:
        """Rows per actor backward pass (`train.update_chunk_rows`; None: the whole minibatch at once).

        By default 2048 on CPU, where a 50,000-row pass streams every activation through memory and runs about
        a third slower than cache-sized chunks, and the whole minibatch on GPUs.
        """
        rows = self.cfg.update_chunk_rows
        if rows is None and device.type == "cpu":
            rows = 2048
        return rows

    def backward(self, mb: Minibatch, train_actor: bool = True, scale: float = 1.0) -> dict[str, Tensor]:
        """`(scale * loss(mb)).backward()`, with the actor's part in row chunks (`chunk_rows`).

        The gradient is the same sum as one pass over the minibatch (the minibatch statistics of the advantages
        are computed first, over all rows); only the order of the floating-point additions differs.

        Returns:
            the detached diagnostics of `loss`.
        """
        n = len(mb.step)
        chunk = self.chunk_rows(mb.step.device) or n
        if not train_actor or chunk >= n:
            loss, info = self.loss(mb, train_actor)
            (scale * loss).backward()
            return info
        v_loss = self.critic_loss(mb)
        info = {"v_loss": v_loss.detach()}
        (scale * self.cfg.vf_coef * v_loss).backward()
        adv = self.actor_advantages(mb)
        for lo in range(0, n, chunk):
            rows = slice(lo, lo + chunk)
            part = Minibatch(
                cond={key: v[rows] for key, v in mb.cond.items()},
                chains=mb.chains[rows],
                step=mb.step[rows],
                returns=mb.returns[rows],
                old_values=mb.old_values[rows],
                advantages=mb.advantages[rows],
                old_log_probs=mb.old_log_probs[rows],
            )
            actor, actor_info = self.actor_loss(part, adv[rows], n)
            (scale * actor).backward()
            for key, value in actor_info.items():
                info[key] = info[key] + value if key in info else value
        return info

    # ---------------------------------------------------------------- the update
    @torch.no_grad()
    def old_log_probs(self, buffer: RolloutBuffer, batch_rows: int) -> Tensor:
        """Reduced log-probs (S * E, K') of every stored transition under the current policy; also stored in the
        buffer. Runs all K' transitions of `batch_rows` env steps per network call, or of fewer where `chunk_rows`
        caps the rows of a call (on CPU)."""
        obs, chains = buffer.flat_obs(), buffer.chains.view(buffer.n_rows, *buffer.chains.shape[2:])
        out = buffer.log_probs.view(buffer.n_rows, -1)
        cap = self.chunk_rows(chains.device)
        if cap is not None:
            batch_rows = min(batch_rows, max(1, cap // self.n_chain_steps))
        for lo in range(0, buffer.n_rows, batch_rows):
            hi = min(lo + batch_rows, buffer.n_rows)
            lp = self.policy.chain_log_prob({k: v[lo:hi] for k, v in obs.items()}, chains[lo:hi])
            out[lo:hi] = reduce_log_prob(lp, self.cfg.reward_horizon)
        return out

    def n_minibatches(self, buffer: RolloutBuffer) -> int:
        """Minibatches per epoch: max(1, N // batch_size) over the N = S * E * K' rows (the remainder dropped)."""
        n_total = buffer.n_rows * self.n_chain_steps
        return max(1, n_total // min(self.cfg.batch_size, n_total))

    def minibatches(self, buffer: RolloutBuffer, old_log_probs: Tensor) -> Any:
        """Yield the epoch's minibatches over the N = S * E * K' (env step, denoising step) pairs.

        A fresh permutation per epoch; max(1, N // batch_size) minibatches, the remainder dropped (reference).
        """
        k_steps = self.n_chain_steps
        n_total = buffer.n_rows * k_steps
        bs = min(self.cfg.batch_size, n_total)
        obs = buffer.flat_obs()
        chains = buffer.chains.view(buffer.n_rows, *buffer.chains.shape[2:])
        adv, ret, val = buffer.advantages.view(-1), buffer.returns.view(-1), buffer.values.view(-1)
        perm = torch.randperm(n_total, device=chains.device)
        for b in range(max(1, n_total // bs)):
            idx = perm[b * bs : (b + 1) * bs]
            n = torch.div(idx, k_steps, rounding_mode="floor")
            k = idx - n * k_steps
            critic_cond, critic_index = None, None
            if k_steps > 1:
                unique_n, critic_index = torch.unique(n, return_inverse=True)
                critic_cond = {key: v[unique_n] for key, v in obs.items()}
            yield Minibatch(
                critic_cond=critic_cond,
                critic_index=critic_index,
                cond={key: v[n] for key, v in obs.items()},
                chains=chains[n],
                step=k,
                returns=ret[n],
                old_values=val[n],
                advantages=adv[n],
                old_log_probs=old_log_probs[n, k],
            )

    def update(self, buffer: RolloutBuffer) -> dict[str, float]:
        """PPO epochs over the rollout (docs/algorithms.md#minibatches, #optimisation); returns mean diagnostics.

        The policy runs in eval mode throughout (old log-probs and every minibatch): its in-network augmentation
        (a pixel encoder's RandomShift) and dropout are off, so the ratio compares one deterministic function of
        the stored observations before and after each step (r = 1 at the first minibatch). Pixel runs augment the
        stored images once instead (`train.augment`, see onpolicy.py). Gradients flow as in train mode.
        """
        was_training = self.policy.training
        self.policy.eval()
        try:
            return self._update(buffer)
        finally:
            self.policy.train(was_training)

    def _optimizer_step(self, train_actor: bool, n_steps_done: int) -> Tensor | None:
        """Clip (actor), step the actor (after the warm-up), eta and critic, then zero every gradient.

        Returns:
            the actor's gradient norm before clipping when `max_grad_norm` is set, else None.
        """
        c = self.cfg
        grad_norm = None
        if train_actor:
            if c.max_grad_norm is not None:
                grad_norm = torch.nn.utils.clip_grad_norm_(self.actor_params, c.max_grad_norm)
            self.optimizers["actor"].step()
            eta_opt = self.optimizers.get("eta")
            if eta_opt is not None and n_steps_done % c.eta_update_interval == 0:
                eta_opt.step()
        self.optimizers["critic"].step()
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        return grad_norm

    def _update(self, buffer: RolloutBuffer) -> dict[str, float]:
        """The epochs of `update`.

        Gradient accumulation (g = `train.grad_accumulate`, docs/algorithms.md#optimisation): backward runs on
        every minibatch with the loss divided by the size of its group, so a step sees the mean gradient of g
        minibatches (an effective batch of g * batch_size rows); every g minibatches the actor is clipped and
        stepped, the critic stepped, the gradients zeroed and the KL stop checked on the group's mean approx_kl.
        A partial group at the end of an epoch is stepped too (a deliberate fix,
        docs/algorithms.md#d17-gradient-accumulation: DPPO carries its gradients into the next epoch, or past the
        last epoch into the next iteration). g = 1 is plain PPO.
        """
        c = self.cfg
        train_actor = self.iteration >= c.n_critic_warmup_itr
        # The old log-probs only enter the actor's loss: skip their pass during the critic warm-up.
        old_lp = buffer.log_probs.view(buffer.n_rows, -1)
        if train_actor:
            old_lp = self.old_log_probs(buffer, c.logprob_batch_size)
        g = c.grad_accumulate
        n_per_epoch = self.n_minibatches(buffer)
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        sums: dict[str, Tensor] = {}
        n_batches = 0
        n_steps = 0
        stopped_early = False
        for _epoch in range(c.update_epochs):
            group_kl: list[Tensor] = []
            for i, mb in enumerate(self.minibatches(buffer, old_lp)):
                group_start = i - i % g
                group_size = min(g, n_per_epoch - group_start)
                info = self.backward(mb, train_actor, 1.0 / group_size)
                n_batches += 1
                if "approx_kl" in info:
                    group_kl.append(info["approx_kl"])
                if i + 1 == group_start + group_size:
                    grad_norm = self._optimizer_step(train_actor, n_steps)
                    n_steps += 1
                    if grad_norm is not None:
                        info["grad_norm"] = grad_norm
                    kl = torch.stack(group_kl).mean() if group_kl else None
                    group_kl = []
                    if train_actor and c.target_kl is not None and kl is not None and float(kl) > c.target_kl:
                        stopped_early = True
                for key, value in info.items():
                    sums[key] = sums.get(key, 0.0) + value.detach()
                if stopped_early:
                    break
            if stopped_early:
                break
        out = {key: float(v) / n_batches for key, v in sums.items()}
        if "grad_norm" in sums:
            out["grad_norm"] = float(sums["grad_norm"]) / max(n_steps, 1)
        out["n_minibatches"] = n_batches
        out["n_optimizer_steps"] = n_steps
        out["kl_stop"] = float(stopped_early)
        returns, values = buffer.returns.view(-1), buffer.values.view(-1)
        var_r = returns.var()
        out["explained_variance"] = float("nan") if var_r == 0 else float(1.0 - (returns - values).var() / var_r)
        out["advantage_mean"] = float(buffer.advantages.mean())
        out["value_mean"] = float(values.mean())
        return out

    def end_iteration(self) -> None:
        """Critic scheduler every iteration; actor (and eta) only once the critic warm-up is over (reference)."""
        self.schedulers["critic"].step()
        if self.iteration >= self.cfg.n_critic_warmup_itr:
            self.schedulers["actor"].step()
            if "eta" in self.schedulers:
                self.schedulers["eta"].step()


class PPOAgent(OnPolicyAgent):
    """Fine-tune a diffusion (DPPO), Gaussian or GMM policy with PPO. Config: cfg/*/finetune/*/ft_ppo_*.yaml."""

    algorithm_class = PPO


__all__ = [
    "PPO",
    "PPOAgent",
    "PPOConfig",
    "Minibatch",
    "clip_coefficients",
    "denoising_discounts",
    "reduce_log_prob",
]
