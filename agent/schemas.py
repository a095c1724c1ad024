"""Typed config schemas: one dataclass per config block, its defaults and its checks in one place.

Each schema is registered in Hydra's ConfigStore (group `schema`, see `register_schemas`) and named in the
defaults list of the YAML piece that fills the block, e.g. `cfg/common/pretrain.yaml`:

    defaults:
      - /schema/pretrain_train@train
      - /schema/ema@ema
      - _self_

so that composition already rejects an unknown key or a value of the wrong type, and `--cfg job` shows the
defaults. The agents read a block as an instance (`load_block`), whose `__post_init__` runs the range checks
with the same one-line `ConfigError`s as everywhere else; they then use attributes, not string lookups.

Blocks typed so far: pretraining's `train` (`PretrainTrain`, with `LrScheduler`) and `ema` (`Ema`). The other
blocks are still read from the plain config (see docs/architecture.md).
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from agent.config import require
from agent.errors import ConfigError
from agent.nonfinite import check_nan_policy

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

    def check(self, where: str) -> None:
        """One-line errors for an impossible schedule; `where` is the block's key (e.g. train.lr_scheduler)."""
        # A warm-up as long as the cycle is allowed (train.n_epochs=1 with DPPO's warmup_steps=1 must still run).
        require(self.first_cycle_steps >= 1, f"{where}.first_cycle_steps must be >= 1, got {self.first_cycle_steps}")
        require(self.warmup_steps >= 0, f"{where}.warmup_steps must be >= 0, got {self.warmup_steps}")
        require(self.min_lr >= 0, f"{where}.min_lr must be >= 0, got {self.min_lr}")


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


SCHEMAS: dict[str, type] = {"pretrain_train": PretrainTrain, "ema": Ema, "lr_scheduler": LrScheduler}
"""ConfigStore names (group `schema`) of the schemas, as the YAML defaults lists name them."""


def register_schemas() -> None:
    """Store every schema in Hydra's ConfigStore under `schema/<name>`; idempotent."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, cls in SCHEMAS.items():
        store.store(group="schema", name=name, node=cls)


def load_block(cls: type[T], node: Any, where: str) -> T:
    """The config block `node` (typed by the schema or a plain mapping, e.g. built by a test) as a `cls` instance.

    Keys the block leaves out take the schema's defaults. A key the schema lacks can only be there on purpose (the
    command line refuses a misspelt key unless it is added with `+`/`++`, as `script/sweep.py` does to share one
    override set between algorithms): it is dropped with a warning naming the closest key. A value of the wrong
    type and a value out of range each end in one `ConfigError` line naming the key (`where` is the block's path,
    e.g. `train`).
    """
    plain: dict[str, Any] = (
        dict(OmegaConf.to_container(node, resolve=True) or {})  # type: ignore[arg-type]
        if isinstance(node, DictConfig)
        else dict(node or {})
    )
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    for key in [k for k in plain if k not in names]:
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
        raise ConfigError(f"{where}.{exc.full_key} is not a key of {where}") from exc
    except OmegaConfBaseException as exc:
        if isinstance(exc.__cause__, ConfigError):
            raise exc.__cause__ from None
        reason = str(exc).strip().splitlines()[0]
        raise ConfigError(f"{where}.{exc.full_key}: {reason}") from exc


__all__ = ["Ema", "LrScheduler", "PretrainTrain", "SCHEMAS", "load_block", "register_schemas"]
