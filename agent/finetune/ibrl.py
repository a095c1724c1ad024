"""IBRL: imitation-bootstrapped RL (docs/algorithms.md#ibrl), on the replay loop.

A TD3-style actor-critic beside a frozen behaviour-cloning policy: both propose an action, and the one the critic
rates higher is taken, in acting and in the bootstrap. The RL actor starts from the BC weights (`base_policy_path`,
a Gaussian policy with a fixed std, e.g. `pre_gaussian_mlp_ibrl`). With a random pair (i, j) of ensemble heads:

    acting   a_BC = mu_BC(s);  a_RL = mu(s) + clip(sigma xi, +-3 sigma) (evaluation: mu(s))
             q_X = min(Q_i, Q_j)(s, a_X);  evaluation: the arg-max; training: BC with probability
             softmax(beta [q_BC, q_RL])_0 (`train.soft_action_sample`, beta = `train.soft_action_beta`)
    critic   a'_BC = mu_BC(s'), a'_RL = mu'(s') + clipped noise (target actor); q'_X = min(Q'_i, Q'_j)(s', a'_X)
             y = r + gamma (1 - term) max(q'_BC, q'_RL);  L_Q = mean over heads and rows of (Q_k(s, a) - y)^2
    actor    L = -mean min_k Q_k(s, a~), a~ = mu(s) + clipped noise (reparameterised), every G critic steps
    targets  Polyak averages of the critic ensemble (every critic step) and of the actor (every actor step)

The offline demonstrations (`offline_dataset_path`) are replayed with the online data as one pool: each batch row is
a demonstration with probability N_demo / (N_demo + N_online). Deliberately different from DPPO's code: the acting
critics are the trained ones (DPPO compared the proposals with never-trained copies), the soft selection is
softmax(beta q) (DPPO's applies exp twice), and the BC proposals and the targets run in eval mode (no dropout)
(docs/algorithms.md#d29-ibrl).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

from agent.config import instantiate, require
from agent.finetune.base import Experiment
from agent.finetune.offline import OfflineTransitions, concat
from agent.finetune.replay import ActorCriticAlgorithm, ReplayAgent, ReplayConfig
from agent.finetune.replay_buffer import ReplayBuffer, Transitions
from agent.optim import OptimSettings, frozen_copy, polyak_update
from agent.schemas import IBRLTrain
from model.base import Policy


def choose_proposals(q_bc: Tensor, q_rl: Tensor, beta: float | None) -> Tensor:
    """(B,) bool, True where the BC proposal is taken: the higher q (beta None), or BC with probability
    softmax(beta [q_BC, q_RL])_0 = sigmoid(beta (q_BC - q_RL))."""
    if beta is None:
        return q_bc > q_rl
    return torch.rand_like(q_bc) < torch.sigmoid(beta * (q_bc - q_rl))


def bootstrap_target(q_bc: Tensor, q_rl: Tensor, rewards: Tensor, terminated: Tensor, gamma: float) -> Tensor:
    """y = r + gamma (1 - term) max(q'_BC, q'_RL)."""
    return rewards + gamma * (1.0 - terminated) * torch.maximum(q_bc, q_rl)


class IBRL(ActorCriticAlgorithm):
    """IBRL update rule (see the module docstring).

    Args:
        policy: the RL actor, a GaussianModel with a fixed std, already holding the BC weights.
        critic: a CriticEnsemble.
        config: shared replay hyper-parameters.
        critic_updates_per_actor: G, critic steps per actor step.
        soft_action_beta: beta of the soft selection in training, or None for the arg-max.
        optim: {actor, critic} -> (lr, weight_decay, lr_scheduler block or None).
    """

    train_schema = IBRLTrain

    model_keys = frozenset({"critic"})
    selects_actions = True  # the better of the BC and the RL proposal acts

    def __init__(
        self,
        policy: Policy,
        critic: nn.Module,
        config: ReplayConfig,
        critic_updates_per_actor: int,
        soft_action_beta: float | None,
        optim: dict[str, OptimSettings],
    ) -> None:
        super().__init__(policy, {"critic": critic}, config, optim, targets=("critic",))
        self.modules["bc_policy"] = frozen_copy(policy).eval()
        self.modules["actor_target"] = frozen_copy(policy).eval()
        self.critic_updates_per_actor = int(critic_updates_per_actor)
        self.soft_action_beta = soft_action_beta
        self.offline: OfflineTransitions | None = None  # set by the agent once the normalization is known
        self.n_critic_steps = 0

    @classmethod
    def validate_config(cls, exp: Experiment) -> None:
        target = str(exp.model_node("_target_") or "")
        require(target.endswith("GaussianModel"), f"model._target_={target}: IBRL needs a GaussianModel policy")
        network = exp.model_node("network")
        require(
            network is not None and network.get("fixed_std") is not None,
            "IBRL's actor adds fixed Gaussian noise: set model.network.fixed_std (e.g. 0.1)",
        )
        require(exp.model_node("critic") is not None, "IBRL needs model.critic (a CriticEnsemble)")
        require(exp.run.base_policy_path is not None, "IBRL starts from a BC policy: set base_policy_path")
        horizon, act = exp.run.horizon_steps, exp.run.act_steps
        require(horizon == act, f"horizon_steps={horizon} but act_steps={act}: IBRL scores executed chunks")
        require(
            exp.run.offline_dataset_path is None or act == 1,
            f"act_steps={act}: the demonstrations are replayed as single-step transitions; set act_steps=1 "
            "(or offline_dataset_path=null)",
        )

    @classmethod
    def from_config(cls, exp: Experiment, policy: Policy, device: torch.device) -> IBRL:
        t = exp.train_as(IBRLTrain)
        return cls(
            policy,
            instantiate(exp.model_node("critic"), "model.critic").to(device),
            ReplayConfig.from_config(exp),
            critic_updates_per_actor=t.critic_updates_per_actor,
            soft_action_beta=t.soft_action_beta if t.soft_action_sample else None,
            optim=t.optim_settings(),
        )

    @property
    def bc_policy(self) -> Policy:
        """The frozen behaviour-cloning policy (eval mode)."""
        return cast(Policy, self.modules["bc_policy"])

    @property
    def actor_target(self) -> Policy:
        """The Polyak-averaged copy of the RL actor (eval mode)."""
        return cast(Policy, self.modules["actor_target"])

    def _pair(self) -> tuple[int, int]:
        n = len(cast(nn.ModuleList, self.modules["critic"].heads))
        return cast(tuple[int, int], tuple(torch.randperm(n)[:2].tolist()))

    @staticmethod
    def pair_min(q: Tensor, pair: tuple[int, int]) -> Tensor:
        return torch.minimum(q[pair[0]], q[pair[1]])

    @torch.no_grad()
    def act(self, cond: dict[str, Tensor], deterministic: bool) -> Tensor:
        """The BC or the RL proposal per row (module docstring). Returns (B, Ta, Da)."""
        a_bc = self.bc_policy.sample(cond, deterministic=True).actions
        a_rl = self.policy.sample(cond, deterministic=deterministic).actions
        critic, pair, te = self.modules["critic"], self._pair(), self.cfg.act_steps
        q_bc = self.pair_min(critic(cond, a_bc[:, :te]), pair)
        q_rl = self.pair_min(critic(cond, a_rl[:, :te]), pair)
        take_bc = choose_proposals(q_bc, q_rl, None if deterministic else self.soft_action_beta)
        return torch.where(take_bc.view(-1, 1, 1), a_bc, a_rl)

    def sample_batch(self, buffer: ReplayBuffer) -> Transitions:
        """Rows from the demonstrations and the online buffer in proportion to their sizes (one pool)."""
        if self.offline is None:
            return buffer.sample(self.cfg.batch_size)
        share = len(self.offline) / (len(self.offline) + len(buffer))
        n_offline = int(torch.binomial(torch.tensor(float(self.cfg.batch_size)), torch.tensor(share)).item())
        if n_offline == self.cfg.batch_size:
            return self.offline.sample(n_offline)
        online = buffer.sample(self.cfg.batch_size - n_offline)
        return online if n_offline == 0 else concat(self.offline.sample(n_offline), online)

    def critic_loss(self, batch: Transitions) -> Tensor:
        te, pair = self.cfg.act_steps, self._pair()
        target = self.modules["critic_target"]
        with torch.no_grad():
            a_bc = self.bc_policy.sample(batch.next_obs, deterministic=True).actions[:, :te]
            a_rl = self.actor_target.sample(batch.next_obs, deterministic=False).actions[:, :te]
            q_bc = self.pair_min(target(batch.next_obs, a_bc), pair)
            q_rl = self.pair_min(target(batch.next_obs, a_rl), pair)
            y = bootstrap_target(q_bc, q_rl, batch.rewards, batch.terminated, self.cfg.gamma)
        return (self.modules["critic"](batch.obs, batch.actions) - y).square().mean()

    def gradient_step(self, batch: Transitions, buffer: ReplayBuffer) -> dict[str, Tensor]:
        critic_loss = self.critic_loss(batch)
        self.step_optimizer("critic", critic_loss)
        polyak_update(self.modules["critic_target"], self.modules["critic"], self.cfg.tau)
        self.n_critic_steps += 1
        info = {"critic_loss": critic_loss.detach()}
        if self.train_actor and self.n_critic_steps % self.critic_updates_per_actor == 0:
            actions = self.policy.sample(batch.obs, deterministic=False).actions[:, : self.cfg.act_steps]
            actor_loss = -self.modules["critic"](batch.obs, actions).min(dim=0).values.mean()
            info.update(self.step_actor(actor_loss, self.actor_params), actor_loss=actor_loss.detach())
            polyak_update(self.modules["actor_target"], self.policy, self.cfg.tau)
        return info


class IBRLAgent(ReplayAgent):
    """Fine-tune a BC Gaussian policy with IBRL. Config: cfg/robomimic/finetune/can/ibrl_mlp.yaml."""

    algorithm_class = IBRL

    def setup(self) -> None:
        super().setup()
        path = self.run_cfg.offline_dataset_path
        if path is not None:
            if self.normalization is None:
                raise ValueError("IBRL's demonstrations need the dataset's normalization (normalization_path)")
            t = cast(IBRLTrain, self.train_cfg)
            cast(IBRL, self.algorithm).offline = OfflineTransitions(
                path, self.normalization, self.device, t.scale_reward_factor
            )


__all__ = ["IBRL", "IBRLAgent", "bootstrap_target", "choose_proposals"]
