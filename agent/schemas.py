"""Typed config schemas: one dataclass per config block, its defaults and its checks in one place.

Each schema is registered in Hydra's ConfigStore (group `schema`, see `register_schemas`) and named in the
defaults list of the YAML piece that fills the block, e.g. `cfg/common/pretrain.yaml`:

    defaults:
      - /schema/pretrain_train@train
      - /schema/ema@ema
      - _self_

so that composition already rejects a value of the wrong type (and a misspelt key, see agent.config.check_overrides),
and `--cfg job` shows the defaults. A schema must come before any piece that sets keys of its block: OmegaConf
merging a schema onto a plain block resets the block to the schema's defaults. The agents read a block as an
instance (`load_block`), whose `__post_init__` runs the range checks with the same one-line `ConfigError`s as
everywhere else; they then use attributes, not string lookups.

Blocks typed: pretraining's `train` (`PretrainTrain`, with `LrScheduler`) and `ema` (`Ema`), the fine-tuning
`train` block of each algorithm (`PPOTrain`, `DQLTrain`, ..., on `FinetuneTrain`, the loop's keys), `wandb`
(`Wandb`) and `env` (`env.factory.EnvConfig`, registered here). Two schemas are built from a node that also holds
other keys, so they are not merged onto it: the top-level keys (`RunKeys`) and PPO's keys of the `model` block
(`PPOModel`); the rest of `model` is `_target_` entries, checked against their constructors by
`agent.config.instantiate` (see docs/architecture.md).
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from agent.config import require
from agent.errors import ConfigError
from agent.nonfinite import check_nan_policy
from agent.optim import OptimSettings
from env.factory import EnvConfig
from model.base import Policy

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass
class LrScheduler:
    """A cosine learning-rate schedule with warm-up and restarts (`agent/schedulers.py`), DPPO's block.

    Attributes:
        first_cycle_steps: length of the first cosine cycle, in scheduler steps (epochs or iterations).
        warmup_steps: linear warm-up steps at the start of each cycle, >= 0.
        min_lr: the learning rate at the end of a cycle.
    """

    first_cycle_steps: int = 1
    warmup_steps: int = 0
    min_lr: float = 0.0

    def check(self, where: str, per_iteration: bool = False) -> None:
        """One-line errors for an impossible schedule; `where` is the block's key (e.g. train.lr_scheduler).

        Pretraining allows a warm-up as long as the cycle (`train.n_epochs=1` with DPPO's warmup_steps=1 must still
        run); fine-tuning's per-iteration schedules (`per_iteration`) need warmup_steps < first_cycle_steps.
        """
        require(self.first_cycle_steps >= 1, f"{where}.first_cycle_steps must be >= 1, got {self.first_cycle_steps}")
        require(self.warmup_steps >= 0, f"{where}.warmup_steps must be >= 0, got {self.warmup_steps}")
        require(self.min_lr >= 0, f"{where}.min_lr must be >= 0, got {self.min_lr}")
        cycle, warmup = self.first_cycle_steps, self.warmup_steps
        require(
            not per_iteration or warmup < cycle,
            f"{where}: warmup_steps={warmup} must be in [0, first_cycle_steps={cycle})",
        )


@dataclass
class PretrainTrain:
    """The `train` block of behaviour-cloning pretraining (agent.pretrain.PretrainAgent); DPPO's gym defaults.

    Attributes:
        n_epochs: passes over the training windows.
        batch_size: windows per gradient step.
        learning_rate: AdamW's (maximum) learning rate.
        weight_decay: AdamW's weight decay.
        lr_scheduler: cosine schedule over epochs (the YAML sets first_cycle_steps to n_epochs).
        save_model_freq: epochs between checkpoints (the last epoch always saves).
        epoch_start_ema: before this epoch the EMA copy just follows the weights.
        update_ema_freq: EMA update every this many batches.
        val_freq: epochs between validation losses (when train_dataset.val_split > 0).
        log_freq: epochs between console lines (every epoch goes to metrics.jsonl).
        nan_policy: on a NaN/inf loss, `stop` (nothing non-finite is saved; null means stop) or `skip_batch` (no
            update from it).
    """

    n_epochs: int = 200
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 1e-6
    lr_scheduler: LrScheduler = field(default_factory=lambda: LrScheduler(200, 1, 1e-4))
    save_model_freq: int = 100
    epoch_start_ema: int = 20
    update_ema_freq: int = 10
    val_freq: int = 10
    log_freq: int = 1
    nan_policy: str | None = "stop"

    def __post_init__(self) -> None:
        for name in ("n_epochs", "batch_size", "save_model_freq", "update_ema_freq", "val_freq", "log_freq"):
            value = getattr(self, name)
            require(value >= 1, f"train.{name} must be >= 1, got {value}")
        require(self.learning_rate > 0, f"train.learning_rate must be > 0, got {self.learning_rate}")
        require(self.weight_decay >= 0, f"train.weight_decay must be >= 0, got {self.weight_decay}")
        require(self.epoch_start_ema >= 0, f"train.epoch_start_ema must be >= 0, got {self.epoch_start_ema}")
        self.nan_policy = check_nan_policy(self.nan_policy)
        self.lr_scheduler.check("train.lr_scheduler")


@dataclass
class Ema:
    """The `ema` block of pretraining: an exponential moving average of the weights (what fine-tuning loads).

    Attributes:
        decay: weight of the old average per update, in [0, 1).
    """

    decay: float = 0.995

    def __post_init__(self) -> None:
        require(0.0 <= self.decay < 1.0, f"ema.decay must be in [0, 1), got {self.decay}")


def _settings(key: str, lr: float, weight_decay: float, schedule: LrScheduler | None) -> OptimSettings:
    """(lr, weight_decay, schedule as a dict or None), checking that the learning rate `key` is positive."""
    require(lr is not None and lr > 0, f"{key} must be set to a value > 0, got {lr!r}")
    return float(lr), float(weight_decay), asdict(schedule) if schedule is not None else None


def _schedule(first_cycle_steps: int, warmup_steps: int, min_lr: float) -> Any:
    """A default LrScheduler block for a dataclass field."""
    return field(default_factory=lambda: LrScheduler(first_cycle_steps, warmup_steps, min_lr))


@dataclass
class FinetuneTrain:
    """The fine-tuning loop's keys of the `train` block (agent.finetune.base.FinetuneAgent), shared by every
    algorithm; each algorithm's schema adds its own keys to the same block, as DPPO's configs do.

    Attributes:
        n_train_itr: training iterations (evaluations do not count).
        n_steps: action chunks per env per iteration.
        batch_size: rows per gradient step (what a row is depends on the algorithm).
        gamma: discount per action chunk.
        n_critic_warmup_itr: iterations that train only the critic (replay: before the actor trains).
        val_freq: evaluate every this many training iterations (null: never); evaluations do not count as
            iterations and do not step the learning-rate schedulers.
        force_train: true: no evaluations at all (DPPO's D3IL configs).
        eval_n_episodes: episodes per evaluation (the YAML sets one per env; null: all finishing within
            eval_n_steps).
        eval_n_steps: chunks per env when eval_n_episodes is null (null: n_steps).
        save_model_freq: iterations between checkpoints (the last always saves).
        log_freq: iterations between console lines (every iteration goes to metrics.jsonl).
        max_env_steps: budget: stop (checkpoint, evaluate) after the iteration reaching this many env steps.
        max_wall_min: budget: stop likewise once iterations and evaluations took this many minutes.
        nan_policy: a NaN/inf loss: `stop` (null means stop) or `skip_batch` (go on while the weights stay finite).
    """

    n_train_itr: int = 1000
    n_steps: int = 500
    batch_size: int = 1000
    gamma: float = 0.99
    n_critic_warmup_itr: int = 0
    val_freq: int | None = 10
    force_train: bool = False
    eval_n_episodes: int | None = None
    eval_n_steps: int | None = None
    save_model_freq: int = 100
    log_freq: int = 1
    # Any: a positive number or null, checked by FinetuneAgent.validate (one line naming the key for any value)
    max_env_steps: Any = None
    max_wall_min: Any = None
    nan_policy: str | None = "stop"

    def __post_init__(self) -> None:
        for key in ("n_train_itr", "n_steps", "save_model_freq", "batch_size", "log_freq"):
            v = getattr(self, key)
            require(v >= 1, f"train.{key} must be an integer >= 1, got {v!r}")
        for key in ("max_env_steps", "max_wall_min"):
            v = getattr(self, key)
            require(
                v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0),
                f"train.{key} must be a positive number or null, got {v!r}",
            )
        val_freq = self.val_freq
        require(val_freq is None or val_freq >= 1, f"train.val_freq must be an integer >= 1 or null, got {val_freq!r}")
        require(0.0 < self.gamma <= 1.0, f"train.gamma must be in (0, 1], got {self.gamma}")
        warm = self.n_critic_warmup_itr
        require(warm >= 0, f"train.n_critic_warmup_itr must be an integer >= 0, got {warm!r}")
        self.nan_policy = check_nan_policy(self.nan_policy)


@dataclass
class ActorCriticTrain(FinetuneTrain):
    """`train` keys of the algorithms with an actor and a critic optimiser (PPO and the replay baselines).

    Attributes:
        actor_lr: AdamW's (maximum) learning rate of the policy.
        actor_weight_decay: AdamW's weight decay of the policy.
        actor_lr_scheduler: cosine schedule of actor_lr per iteration (null: constant).
        critic_lr: AdamW's (maximum) learning rate of the critic(s).
        critic_weight_decay: AdamW's weight decay of the critic(s).
        critic_lr_scheduler: cosine schedule of critic_lr per iteration (null: constant).
    """

    actor_lr: float = 1e-4
    actor_weight_decay: float = 0.0
    actor_lr_scheduler: LrScheduler | None = _schedule(1000, 10, 1e-4)
    critic_lr: float = 1e-3
    critic_weight_decay: float = 0.0
    critic_lr_scheduler: LrScheduler | None = _schedule(1000, 10, 1e-3)

    def __post_init__(self) -> None:
        super().__post_init__()
        for key, schedule in (("actor", self.actor_lr_scheduler), ("critic", self.critic_lr_scheduler)):
            if schedule is not None:
                schedule.check(f"train.{key}_lr_scheduler", per_iteration=True)

    def optim_settings(self) -> dict[str, OptimSettings]:
        """{actor, critic} -> (lr, weight_decay, lr_scheduler block or None), for agent.optim.make_optimizer."""
        return {
            "actor": _settings("train.actor_lr", self.actor_lr, self.actor_weight_decay, self.actor_lr_scheduler),
            "critic": _settings("train.critic_lr", self.critic_lr, self.critic_weight_decay, self.critic_lr_scheduler),
        }


@dataclass
class OnPolicyTrain(FinetuneTrain):
    """`train` keys of the on-policy loop (agent/finetune/onpolicy.py: PPO, RWR).

    Attributes:
        gae_lambda: lambda of GAE (RWR: returns with lambda = 1 and no critic, this key unused).
        logprob_batch_size: env steps per batch of the value / old-log-prob passes.
        reward_scale_running: divide rewards by a running std of the discounted return.
        reward_scale_const: multiply rewards by this.
        augment: pixels: randomly shift the stored images once per iteration (augment_pad pixels).
        augment_pad: the shift's padding in pixels.
    """

    gae_lambda: float = 0.95
    logprob_batch_size: int = 10000
    reward_scale_running: bool = False
    reward_scale_const: float = 1.0
    augment: bool = False
    augment_pad: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0.0 <= self.gae_lambda <= 1.0, f"train.gae_lambda must be in [0, 1], got {self.gae_lambda}")
        lbs, pad = self.logprob_batch_size, self.augment_pad
        require(lbs >= 1, f"train.logprob_batch_size must be an integer >= 1, got {lbs!r}")
        require(pad >= 0, f"train.augment_pad must be an integer >= 0, got {pad!r}")


@dataclass
class PPOTrain(ActorCriticTrain, OnPolicyTrain):
    """`train` block of PPO fine-tuning (DPPO for diffusion; Gaussian/GMM PPO), DPPO's hopper-v2 values; the clipping
    keys live in the `model` block, as in DPPO (docs/algorithms.md#ppo-loss).

    Attributes:
        batch_size: (env step x denoising step) rows per minibatch.
        update_epochs: passes over the rollout per iteration.
        grad_accumulate: optimiser step every this many minibatches, on their mean gradient (pixels: 15).
        update_chunk_rows: rows per actor backward pass within a minibatch (null: 2048 on CPU, all on GPU).
        vf_coef: weight of the value loss.
        ent_coef: weight of the entropy bonus.
        target_kl: stop the update once a minibatch's approximate KL exceeds this (null: never).
        max_grad_norm: clip the actor's gradient norm (null: no clipping).
        reward_scale_running: see OnPolicyTrain (on for PPO).
        use_bc_loss: regularise toward the pretrained policy's chains.
        bc_loss_coeff: weight of that term.
        eta_lr: learning rate of a learned DDIM eta.
        eta_weight_decay: its weight decay.
        eta_lr_scheduler: its schedule (null: constant).
        eta_update_interval: update eta every this many minibatches.
    """

    batch_size: int = 50000
    update_epochs: int = 5
    grad_accumulate: int = 1
    update_chunk_rows: int | None = None
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    target_kl: float | None = 1.0
    max_grad_norm: float | None = None
    reward_scale_running: bool = True
    use_bc_loss: bool = False
    bc_loss_coeff: float = 0.0
    eta_lr: float = 1e-4
    eta_weight_decay: float = 0.0
    eta_lr_scheduler: LrScheduler | None = None
    eta_update_interval: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        accumulate, chunk, epochs = self.grad_accumulate, self.update_chunk_rows, self.update_epochs
        require(accumulate >= 1, f"train.grad_accumulate must be an integer >= 1, got {accumulate!r}")
        require(
            chunk is None or chunk >= 1,
            f"train.update_chunk_rows must be an integer >= 1 or null (automatic), got {chunk!r}",
        )
        require(epochs >= 1, f"train.update_epochs must be >= 1, got {epochs!r}")
        kl = self.target_kl
        require(kl is None or kl > 0, f"train.target_kl must be > 0 or null, got {kl}")
        if self.eta_lr_scheduler is not None:
            self.eta_lr_scheduler.check("train.eta_lr_scheduler", per_iteration=True)
        require(not self.use_bc_loss or self.bc_loss_coeff > 0, "train.use_bc_loss needs train.bc_loss_coeff > 0")


@dataclass
class ReplayTrain(ActorCriticTrain):
    """`train` keys every replay baseline shares (agent/finetune/replay.py).

    Attributes:
        batch_size: transitions per gradient step.
        buffer_size: transitions the replay buffer holds (env steps x envs).
        replay_ratio: gradient steps per iteration = n_steps * n_envs / batch_size * replay_ratio.
        scale_reward_factor: rewards are stored multiplied by this.
        max_grad_norm: clip the actor's gradient norm (null: no clipping).
        save_replay_buffer: checkpoint the buffer too (it can be large); otherwise a resumed run refills it.
        critic_tau: Polyak rate of the target networks (DPPO's name in QSM and IDQL).
        target_ema_rate: the same rate under DPPO's name in DQL and DIPO (used when critic_tau is null).
    """

    buffer_size: int = 1000000
    replay_ratio: float = 1.0
    scale_reward_factor: float = 1.0
    max_grad_norm: float | None = None
    save_replay_buffer: bool = False
    critic_tau: float | None = None
    target_ema_rate: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.replay_ratio > 0, f"train.replay_ratio must be > 0, got {self.replay_ratio!r}")
        for key, tau in (("train.critic_tau", self.critic_tau), ("train.target_ema_rate", self.target_ema_rate)):
            require(tau is None or 0.0 < tau <= 1.0, f"{key} must be in (0, 1], got {tau}")
        scale = self.scale_reward_factor
        require(scale > 0, f"train.scale_reward_factor must be > 0, got {scale}")

    @property
    def polyak_rate(self) -> float:
        """tau of the target networks: critic_tau, else target_ema_rate, else 0.005."""
        for rate in (self.critic_tau, self.target_ema_rate):
            if rate is not None:
                return float(rate)
        return 0.005

    def gradient_steps(self, n_envs: int) -> int:
        """Gradient steps per iteration, int(n_steps * n_envs / batch_size * replay_ratio) (DPPO's num_batch)."""
        return int(self.n_steps * n_envs / self.batch_size * self.replay_ratio)


@dataclass
class DQLTrain(ReplayTrain):
    """`train` block of Diffusion-QL (docs/algorithms.md#dql).

    Attributes:
        eta: weight of the normalised Q term in the actor loss.
        target_ema_rate: Polyak rate of the target critic.
        replay_ratio: see ReplayTrain.
        bc_on_policy_samples: true: DPPO's BC term on the policy's own samples
            (docs/algorithms.md#d13-dql-behaviour-cloning).
    """

    eta: float = 1.0
    target_ema_rate: float | None = 0.005
    replay_ratio: float = 16.0
    bc_on_policy_samples: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.eta >= 0, f"train.eta must be >= 0, got {self.eta}")


@dataclass
class FQLTrain(ReplayTrain):
    """`train` block of flow Q-learning (docs/algorithms.md#fql).

    Attributes:
        alpha: weight of the distillation loss of the one-step actor toward the flow's samples.
        normalize_q_loss: divide the Q term by the detached mean |Q| (independent of the reward scale).
        target_ema_rate: Polyak rate of the target critic.
        replay_ratio: see ReplayTrain.
    """

    alpha: float = 3.0
    normalize_q_loss: bool = True
    target_ema_rate: float | None = 0.005
    replay_ratio: float = 16.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.alpha >= 0, f"train.alpha must be >= 0, got {self.alpha}")


@dataclass
class SACTrain(ReplayTrain):
    """`train` block of soft actor-critic (docs/algorithms.md#sac).

    Attributes:
        init_temperature: the entropy temperature alpha at the start, > 0.
        target_entropy: the entropy alpha steers toward (null: -Ta * Da).
        temperature_lr: the temperature's learning rate (null: critic_lr).
        n_explore_steps: env steps of uniform random actions (no updates) at the start.
        target_ema_rate: Polyak rate of the target critic.
        replay_ratio: see ReplayTrain (batch_size: one gradient step per stored transition).
    """

    init_temperature: float = 1.0
    target_entropy: float | None = None
    temperature_lr: float | None = None
    n_explore_steps: int = 0
    target_ema_rate: float | None = 0.005
    replay_ratio: float = 256.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.init_temperature > 0, f"train.init_temperature must be > 0, got {self.init_temperature}")
        require(self.n_explore_steps >= 0, f"train.n_explore_steps must be >= 0, got {self.n_explore_steps}")
        lr = self.temperature_lr
        require(lr is None or lr > 0, f"train.temperature_lr must be > 0 or null, got {lr}")


@dataclass
class RLPDTrain(SACTrain):
    """`train` block of RLPD (docs/algorithms.md#rlpd): SAC's keys plus the ones below.

    Attributes:
        critic_updates_per_actor: G, critic steps per actor and temperature step (the update-to-data ratio).
        backup_entropy: add the entropy term to the critic's target.
        offline_fraction: the share of each batch drawn from the offline dataset (`offline_dataset_path`).
    """

    critic_updates_per_actor: int = 20
    backup_entropy: bool = True
    offline_fraction: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        g = self.critic_updates_per_actor
        require(g >= 1, f"train.critic_updates_per_actor must be >= 1, got {g}")
        f = self.offline_fraction
        require(0.0 <= f < 1.0, f"train.offline_fraction must be in [0, 1), got {f}")


@dataclass
class IBRLTrain(ReplayTrain):
    """`train` block of IBRL (docs/algorithms.md#ibrl).

    Attributes:
        critic_updates_per_actor: G, critic steps per actor step.
        soft_action_sample: in training, take the BC proposal with probability softmax(beta q) instead of the
            arg-max.
        soft_action_beta: beta of that softmax, > 0.
        target_ema_rate: Polyak rate of the target critic and actor.
        replay_ratio: see ReplayTrain.
    """

    critic_updates_per_actor: int = 2
    soft_action_sample: bool = True
    soft_action_beta: float = 10.0
    target_ema_rate: float | None = 0.01
    replay_ratio: float = 384.0

    def __post_init__(self) -> None:
        super().__post_init__()
        g = self.critic_updates_per_actor
        require(g >= 1, f"train.critic_updates_per_actor must be >= 1, got {g}")
        require(self.soft_action_beta > 0, f"train.soft_action_beta must be > 0, got {self.soft_action_beta}")


@dataclass
class CalQLTrain(SACTrain):
    """`train` block of Cal-QL (docs/algorithms.md#cal-ql): SAC's keys plus the ones below.

    Attributes:
        cql_weight: lambda, the weight of the conservative penalty.
        n_random_actions: uniform actions per state in the penalty.
        n_target_actions: policy samples at s' for the max-backup target.
        offline_fraction: online stage: the share of each batch drawn from the offline dataset.
    """

    cql_weight: float = 5.0
    n_random_actions: int = 4
    n_target_actions: int = 10
    offline_fraction: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.cql_weight >= 0, f"train.cql_weight must be >= 0, got {self.cql_weight}")
        for key in ("n_random_actions", "n_target_actions"):
            require(getattr(self, key) >= 1, f"train.{key} must be >= 1, got {getattr(self, key)}")
        f = self.offline_fraction
        require(0.0 <= f < 1.0, f"train.offline_fraction must be in [0, 1), got {f}")


@dataclass
class QSMTrain(ReplayTrain):
    """`train` block of Q-score matching (docs/algorithms.md#qsm).

    Attributes:
        q_grad_coeff: the score -eps_theta is matched to q_grad_coeff * dQ/da at the noised action.
        critic_tau: Polyak rate of the target critic.
        replay_ratio: see ReplayTrain.
    """

    q_grad_coeff: float = 10.0
    critic_tau: float | None = 0.005
    replay_ratio: float = 16.0


@dataclass
class DIPOTrain(ReplayTrain):
    """`train` block of DIPO (docs/algorithms.md#dipo).

    Attributes:
        target_ema_rate: Polyak rate of the target critic and the target actor.
        action_lr: Adam step size of the action improvement.
        action_gradient_steps: Adam steps on the buffer actions per gradient step.
    """

    target_ema_rate: float | None = 0.005
    action_lr: float = 1e-4
    action_gradient_steps: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        steps = self.action_gradient_steps
        require(steps >= 1, f"train.action_gradient_steps must be >= 1, got {steps!r}")
        require(self.action_lr > 0, f"train.action_lr must be > 0, got {self.action_lr}")


@dataclass
class IDQLTrain(ReplayTrain):
    """`train` block of IDQL (docs/algorithms.md#idql).

    Attributes:
        critic_tau: Polyak rate of the target Q.
        replay_ratio: see ReplayTrain.
        eval_sample_num: candidates per state, in rollouts and evaluations.
        eval_deterministic: evaluations: deterministic candidates, the arg-max-Q one is executed.
        use_expectile_exploration: rollouts: draw a candidate with weight critic_hyperparam where Q - V > 0.
        expectile: expectile of the V loss (hard-coded in DPPO).
        critic_hyperparam: candidate weight for a positive advantage (hard-coded in DPPO).
    """

    critic_tau: float | None = 0.001
    replay_ratio: float = 128.0
    eval_sample_num: int = 10
    eval_deterministic: bool = True
    use_expectile_exploration: bool = True
    expectile: float = 0.8
    critic_hyperparam: float = 0.7

    def __post_init__(self) -> None:
        super().__post_init__()
        n = self.eval_sample_num
        require(n >= 1, f"train.eval_sample_num must be an integer >= 1, got {n!r}")
        for key, v in (("train.expectile", self.expectile), ("train.critic_hyperparam", self.critic_hyperparam)):
            require(0.0 < v < 1.0, f"{key} must be in (0, 1), got {v}")


@dataclass
class AWRTrain(ReplayTrain):
    """`train` block of AWR (docs/algorithms.md#awr).

    Attributes:
        beta: weights exp(beta * normalised advantage).
        max_adv_weight: weight cap.
        replay_ratio: actor steps per iteration = n_steps * n_envs / batch_size * replay_ratio.
        critic_update_ratio: critic steps = actor steps / critic_update_ratio.
        td_lambda: lambda of the TD(lambda) targets (hard-coded in DPPO).
        td_alpha: factor on the TD errors in the targets (hard-coded in DPPO).
    """

    beta: float = 10.0
    max_adv_weight: float = 100.0
    replay_ratio: float = 64.0
    critic_update_ratio: int = 4
    td_lambda: float = 0.95
    td_alpha: float = 0.95

    def __post_init__(self) -> None:
        super().__post_init__()
        ratio = self.critic_update_ratio
        require(ratio >= 1, f"train.critic_update_ratio must be >= 1, got {ratio!r}")
        for key, v in (("train.td_lambda", self.td_lambda), ("train.td_alpha", self.td_alpha)):
            require(0.0 <= v <= 1.0, f"{key} must be in [0, 1], got {v}")


@dataclass
class RWRTrain(OnPolicyTrain):
    """`train` block of reward-weighted regression (docs/algorithms.md#rwr), an on-policy baseline.

    Attributes:
        lr: AdamW's (maximum) learning rate of the policy.
        weight_decay: its weight decay.
        lr_scheduler: cosine schedule of lr per iteration (null: constant).
        beta: weights exp(beta * normalised return).
        max_reward_weight: weight cap.
        batch_size: samples per minibatch.
        update_epochs: shuffled passes per iteration.
    """

    lr: float = 1e-4
    weight_decay: float = 0.0
    lr_scheduler: LrScheduler | None = None
    beta: float = 10.0
    max_reward_weight: float = 100.0
    batch_size: int = 1000
    update_epochs: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.update_epochs >= 1, f"train.update_epochs must be >= 1, got {self.update_epochs!r}")
        if self.lr_scheduler is not None:
            self.lr_scheduler.check("train.lr_scheduler", per_iteration=True)
        for key, v in (("train.beta", self.beta), ("train.max_reward_weight", self.max_reward_weight)):
            require(v > 0, f"{key} must be > 0, got {v}")
        self.optim_settings()  # train.lr > 0

    def optim_settings(self) -> OptimSettings:
        """(lr, weight_decay, lr_scheduler block or None) of the policy's optimiser."""
        return _settings("train.lr", self.lr, self.weight_decay, self.lr_scheduler)


@dataclass
class Wandb:
    """The `wandb` block (every run; `wandb=null` turns wandb off). The console and `<logdir>/metrics.jsonl` log
    always.

    Attributes:
        entity: the wandb team or user (null: the account's default).
        project: the wandb project (the YAML sets `<suite>-<env_name>`).
        run: the run's name (the YAML sets the start time and the experiment name).
        mode: `online`, `offline` or `disabled` (the YAML reads WANDB_MODE, else online; wandb checks it).
    """

    entity: str | None = None
    project: str = "dppo"
    run: str | None = None
    mode: str | None = "online"


@dataclass
class RunKeys:
    """The top-level keys the agents read, built once per run (`BaseAgent.run_cfg`).

    The root of a config stays an open mapping: DPPO's files also put task facts, policy and dataset keys there,
    which their own blocks interpolate (`${horizon_steps}`), so this schema is not merged onto the root; it is built
    from it with the other keys left aside.

    Attributes:
        seed: the run's seed, >= 0.
        device: auto (cuda:0 when available, else cpu), cpu, cuda or cuda:N.
        resume: false; true (the newest earlier run of this experiment); or a run folder / checkpoint path.
        allow_pickle: load checkpoints that need full unpickling (only files you trust).
        base_policy_path: the checkpoint fine-tuning or evaluation starts from.
        normalization_path: the dataset's normalization.npz.
        robomimic_env_cfg_path: robomimic's env_meta JSON (null: the one shipped under cfg/robomimic/env_meta).
        obs_dim: the observation size Do.
        action_dim: the action size Da.
        horizon_steps: Ta, the actions per chunk the policy predicts.
        act_steps: Te <= Ta, the actions of each chunk the env executes.
        cond_steps: To, the observations the policy is conditioned on.
        img_cond_steps: the images among them, in [1, To].
        denoising_steps: K, the diffusion chain's steps.
        ft_denoising_steps: K' >= 0, the fine-tuned last steps of the chain (0: none; the baselines tune it all).
        reward_horizon: PPO's executed actions whose log-probability counts (null: act_steps).
        offline_dataset_path: the dataset an off-policy learner replays beside its online data (RLPD).
        n_steps: evaluation's chunks per env, when n_episodes is null.
        n_episodes: evaluation's episodes to report.
        suite: gym, robomimic, d3il (for folder names and hints).
        env_name: the task (for folder names and hints).
        policy_name: the policy's config name (for folder names and hints).
    """

    seed: int = 42
    device: str = "auto"
    resume: Any = False
    allow_pickle: bool = False
    base_policy_path: str | None = None
    normalization_path: str | None = None
    robomimic_env_cfg_path: str | None = None
    obs_dim: int | None = None
    action_dim: int | None = None
    horizon_steps: int | None = None
    act_steps: int | None = None
    cond_steps: int | None = None
    img_cond_steps: int | None = None
    denoising_steps: int | None = None
    ft_denoising_steps: int | None = None
    reward_horizon: int | None = None
    offline_dataset_path: str | None = None
    n_steps: int | None = None
    n_episodes: int | None = None
    suite: str | None = None
    env_name: str | None = None
    policy_name: str | None = None

    def __post_init__(self) -> None:
        for key in ("obs_dim", "action_dim", "horizon_steps", "cond_steps", "denoising_steps", "act_steps"):
            v = getattr(self, key)
            require(v is None or v >= 1, f"{key} must be an integer >= 1, got {v!r}")
        horizon, act = self.horizon_steps, self.act_steps
        require(
            act is None or horizon is None or act <= horizon,
            f"act_steps={act} is larger than horizon_steps={horizon}; set act_steps <= horizon_steps",
        )
        cond, img_cond = self.cond_steps, self.img_cond_steps
        if img_cond is not None and cond is not None:
            require(1 <= img_cond <= cond, f"img_cond_steps={img_cond} must be in [1, cond_steps={cond}]")
        k_ft = self.ft_denoising_steps
        require(k_ft is None or k_ft >= 0, f"ft_denoising_steps must be an integer >= 0, got {k_ft!r}")
        require(self.seed >= 0, f"seed must be a non-negative integer, got {self.seed!r}")
        for key in ("reward_horizon", "n_steps", "n_episodes"):
            v = getattr(self, key)
            require(v is None or v >= 1, f"{key} must be an integer >= 1 or null, got {v!r}")


@dataclass
class PPOModel:
    """PPO's keys in the `model` block (DPPO keeps them there); the block's other keys build the policy and critic.

    Attributes:
        gamma_denoising: discount over the denoising steps of one env step (DPPO's denoising discount).
        clip_ploss_coef: PPO's ratio clip at the last denoising step, > 0.
        clip_ploss_coef_base: the clip at the first fine-tuned denoising step.
        clip_ploss_coef_rate: how fast the clip grows from base to clip_ploss_coef along the chain.
        clip_vloss_coef: clip of the value update around the old values (null: unclipped).
        clip_advantage_lower_quantile: advantages below this quantile of the minibatch are raised to it.
        clip_advantage_upper_quantile: advantages above this quantile are lowered to it (0 <= lower < upper <= 1).
        norm_adv: normalise advantages per minibatch.
    """

    gamma_denoising: float = 0.99
    clip_ploss_coef: float = 0.01
    clip_ploss_coef_base: float = 1e-3
    clip_ploss_coef_rate: float = 3.0
    clip_vloss_coef: float | None = None
    clip_advantage_lower_quantile: float = 0.0
    clip_advantage_upper_quantile: float = 1.0
    norm_adv: bool = True

    def __post_init__(self) -> None:
        for key in ("clip_ploss_coef", "clip_ploss_coef_base"):
            v = getattr(self, key)
            require(v > 0, f"model.{key} must be > 0, got {v}")
        lo, hi = self.clip_advantage_lower_quantile, self.clip_advantage_upper_quantile
        require(0.0 <= lo < hi <= 1.0, f"advantage quantiles must satisfy 0 <= lower < upper <= 1, got {lo}, {hi}")


SCHEMAS: dict[str, type] = {
    "pretrain_train": PretrainTrain,
    "ema": Ema,
    "lr_scheduler": LrScheduler,
    "ppo_train": PPOTrain,
    "dql_train": DQLTrain,
    "fql_train": FQLTrain,
    "sac_train": SACTrain,
    "rlpd_train": RLPDTrain,
    "ibrl_train": IBRLTrain,
    "calql_train": CalQLTrain,
    "qsm_train": QSMTrain,
    "dipo_train": DIPOTrain,
    "idql_train": IDQLTrain,
    "awr_train": AWRTrain,
    "rwr_train": RWRTrain,
    "wandb": Wandb,
    "env": EnvConfig,
}
"""ConfigStore names (group `schema`) of the schemas, as the YAML defaults lists name them."""


def policy_schemas() -> dict[str, type[Policy]]:
    """ConfigStore names (group `schema`) of the policy families, each a policy class whose `Keys` dataclass is the
    schema of its `model` block (`cfg/common/policy/*.yaml` name them). A subclass's entry holds only the keys it
    adds (ExactDiffusion's ode keys, ShortcutFlowModel's self-consistency keys), so that a piece can add them to a
    block its base family's piece has already filled."""
    from model.diffusion.diffusion import DiffusionModel
    from model.diffusion.exact import ExactDiffusion
    from model.flow.flow import FlowModel
    from model.flow.shortcut import ShortcutFlowModel
    from model.gaussian.model import GaussianModel
    from model.gmm.model import GMMModel

    return {
        "policy_diffusion": DiffusionModel,
        "policy_exact_diffusion": ExactDiffusion,
        "policy_flow": FlowModel,
        "policy_shortcut": ShortcutFlowModel,
        "policy_gaussian": GaussianModel,
        "policy_gmm": GMMModel,
    }


def policy_schema_node(policy: type[Policy]) -> DictConfig:
    """The ConfigStore node of a policy family: `_target_` naming `policy`, then one typed value node (type and
    default from `policy.Keys`) per key that `policy.Keys` declares beyond its base class's `Keys`.

    It is a plain mapping of typed values, not a structured config: the `model` block it types also holds the
    network, critics and the algorithm's keys, so it must stay open to them while composing, and closes like any
    other block afterwards (Hydra's struct mode). A value of the wrong type is still refused at composition.
    """
    keys = policy.Keys
    inherited = {f.name for base in policy.__mro__[1:] if hasattr(base, "Keys") for f in fields(base.Keys)}
    typed = OmegaConf.structured(keys)
    node = OmegaConf.create({"_target_": f"{policy.__module__}.{policy.__name__}"})
    for f in fields(keys):
        if f.name not in inherited:
            node[f.name] = typed._get_node(f.name)
    return node


def register_schemas() -> None:
    """Store every schema in Hydra's ConfigStore under `schema/<name>`; idempotent."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, cls in SCHEMAS.items():
        store.store(group="schema", name=name, node=cls)
    for name, policy in policy_schemas().items():
        store.store(group="schema", name=name, node=policy_schema_node(policy))


def load_block(cls: type[T], node: Any, where: str, *, open_block: bool = False) -> T:
    """The config block `node` (typed by the schema or a plain mapping, e.g. built by a test) as a `cls` instance.

    Keys the block leaves out take the schema's defaults. A key the schema lacks can only be there on purpose (the
    command line refuses a misspelt key unless it is added with `+`/`++`, as `script/sweep.py` does to share one
    override set between algorithms): it is dropped with a warning naming the closest key. A value of the wrong
    type and a value out of range each end in one `ConfigError` line naming the key (`where` is the block's path,
    e.g. `train`). `open_block`: the node also holds keys that other schemas read (the root, `model`); they are
    left aside without a warning.
    """
    plain: dict[str, Any] = (
        dict(OmegaConf.to_container(node, resolve=True) or {})  # type: ignore[arg-type]
        if isinstance(node, DictConfig)
        else dict(node or {})
    )
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    for key in [k for k in plain if k not in names]:
        if open_block:
            del plain[key]
            continue
        close = difflib.get_close_matches(str(key), names, n=1)
        hint = f"did you mean {where}.{close[0]}?" if close else f"{where} takes {', '.join(names)}"
        log.warning("%s.%s is not used here and is ignored (%s)", where, key, hint)
        del plain[key]
    try:
        typed = OmegaConf.merge(OmegaConf.structured(cls), plain)
        return OmegaConf.to_object(typed)  # type: ignore[return-value]
    except ConfigError:
        raise
    except ConfigKeyError as exc:
        raise ConfigError(f"{_path(where, str(exc.full_key))} is not a key of {where or 'the config'}") from exc
    except OmegaConfBaseException as exc:
        if isinstance(exc.__cause__, ConfigError):
            raise exc.__cause__ from None
        reason = str(exc).strip().splitlines()[0]
        raise ConfigError(f"{_path(where, str(exc.full_key))}: {reason}") from exc


def _path(where: str, key: str) -> str:
    """`where.key`, or `key` at the root (where = "")."""
    return f"{where}.{key}" if where else key


__all__ = [
    "AWRTrain",
    "ActorCriticTrain",
    "DIPOTrain",
    "DQLTrain",
    "FQLTrain",
    "SACTrain",
    "RLPDTrain",
    "IBRLTrain",
    "CalQLTrain",
    "Ema",
    "FinetuneTrain",
    "OnPolicyTrain",
    "IDQLTrain",
    "LrScheduler",
    "PPOTrain",
    "PretrainTrain",
    "QSMTrain",
    "RWRTrain",
    "ReplayTrain",
    "SCHEMAS",
    "Wandb",
    "load_block",
    "policy_schema_node",
    "policy_schemas",
    "register_schemas",
]
