"""Behaviour-cloning pretraining, one agent for every policy family (diffusion, Gaussian, GMM).

Per batch: `loss = model.loss(actions, cond)`, AdamW step. Every `train.update_ema_freq` batches the EMA copy is
either set to the weights (before epoch `train.epoch_start_ema`) or moved toward them with `ema.decay`. The lr
schedule steps once per epoch. Checkpoints `checkpoint/state_<epoch>.pt` hold `model`, `ema`, optimizer, scheduler,
RNG state, the resolved config and the normalization statistics; `resume=true` continues a killed run.

A NaN/inf loss or weight stops the run at the end of its epoch with one line (`train.nan_policy`, agent/nonfinite.py);
no checkpoint with a non-finite weight is written.
"""

from __future__ import annotations

import copy
import logging
import math
import time

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from agent.base import BaseAgent, load_normalization
from agent.checkpoint import (
    checkpoint_path,
    find_resume_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from agent.config import instantiate
from agent.dataset import StitchedSequenceDataset
from agent.errors import ConfigError, DataError
from agent.nonfinite import diverged, non_finite_parameters
from agent.optim import make_adamw
from agent.schedulers import CosineWarmupRestarts
from agent.schemas import Ema, PretrainTrain, load_block
from agent.utils import rng_state, set_rng_state
from model.base import Policy

log = logging.getLogger(__name__)


class EMA:
    """Exponential moving average of a model's parameters, kept in a deep copy of the model.

    Args:
        model: the trained model.
        decay: weight of the old average per update (0.995 in every DPPO config).
    """

    def __init__(self, model: Policy, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema.decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.model: Policy = copy.deepcopy(model).requires_grad_(False)
        self._src: list[torch.Tensor] = [p for p in model.parameters()]
        self._dst: list[torch.Tensor] = [p for p in self.model.parameters()]

    @torch.no_grad()
    def copy_from_model(self) -> None:
        torch._foreach_copy_(self._dst, self._src)

    @torch.no_grad()
    def update(self) -> None:
        # p_ema <- decay * p_ema + (1 - decay) * p
        torch._foreach_lerp_(self._dst, self._src, 1.0 - self.decay)


class PretrainAgent(BaseAgent):
    """Trains `cfg.model` by behaviour cloning on `cfg.train_dataset`."""

    train_cfg: PretrainTrain
    ema_cfg: Ema

    def validate(self, cfg: DictConfig) -> None:
        # the typed blocks (agent/schemas.py): their checks run here, before the run folder exists
        self.train_cfg = load_block(PretrainTrain, cfg.train, "train")
        self.ema_cfg = load_block(Ema, cfg.get("ema"), "ema")

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        t = self.train_cfg
        self.dataset: StitchedSequenceDataset = instantiate(cfg.train_dataset, "train_dataset", device=self.device)
        self.model: Policy = instantiate(cfg.model, "model").to(self.device)
        self.ema = EMA(self.model, self.ema_cfg.decay)
        self.optimizer = make_adamw(self.model.parameters(), t.learning_rate, t.weight_decay)
        sched = t.lr_scheduler
        self.scheduler = CosineWarmupRestarts(
            self.optimizer, sched.first_cycle_steps, sched.warmup_steps, sched.min_lr, max_lr=t.learning_rate
        )
        self.normalization = load_normalization(self.run_cfg.normalization_path, self.run_cfg)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.epoch = 0
        self.resumed_from: str | None = None  # the checkpoint `load` read
        self.n_batches = 0
        # read once: a config lookup per batch costs about 1% of a small MLP's step
        self.update_ema_freq, self.epoch_start_ema = t.update_ema_freq, t.epoch_start_ema
        self.skip_nonfinite = t.nan_policy != "stop"
        self.skipped_batches = 0  # in the last epoch (train.nan_policy=skip_batch)
        n_params = sum(p.numel() for p in self.model.parameters())
        log.info(
            "model %s: %d parameters; %d training windows",
            type(self.model).__name__,
            n_params,
            len(self.dataset),
        )
        if t.batch_size > len(self.dataset):
            log.warning(
                "train.batch_size=%d is larger than the dataset's %d training windows: every epoch is one smaller "
                "batch; lower train.batch_size",
                t.batch_size,
                len(self.dataset),
            )
        resume = find_resume_checkpoint(self.run_cfg.resume, self.logdir)
        if resume is not None:
            self.load(resume)

    def state(self) -> dict:
        return {
            "kind": "pretrain",
            "epoch": self.epoch,
            "n_batches": self.n_batches,
            "model": self.model.state_dict(),
            "ema": self.ema.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "rng": rng_state(),
            "config": OmegaConf.to_container(self.cfg),
            "normalization": self.normalization,
        }

    def save(self) -> None:
        path = save_checkpoint(checkpoint_path(self.logdir, self.epoch), self.state())
        log.info("saved %s", path)

    def load(self, path) -> None:
        ckpt = load_checkpoint(path, map_location=self.device, allow_pickle=self.run_cfg.allow_pickle)
        if ckpt.get("kind") != "pretrain":
            raise DataError(
                f"resume={path} is a {ckpt.get('kind', 'foreign')} checkpoint, not a pretraining one; resume it with "
                "its fine-tuning config, or give a pretraining run's folder or checkpoint"
            )
        self.model.load_state_dict(ckpt["model"])
        self.ema.model.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.generator.set_state(ckpt["generator"].cpu())  # a CPU generator; the tensors may be on the GPU
        set_rng_state(ckpt["rng"])
        self.epoch, self.n_batches = int(ckpt["epoch"]), int(ckpt["n_batches"])
        self.resumed_from = str(path)
        log.info("resumed from %s at epoch %d", path, self.epoch)

    @torch.no_grad()
    def validation_loss(self) -> float | None:
        """Mean EMA-model loss over the held-out windows (None without a split)."""
        if len(self.dataset.val_indices) == 0:
            return None
        self.ema.model.eval()
        total, count = 0.0, 0
        for batch in self.dataset.iterate(self.train_cfg.batch_size, split="val", shuffle=False):
            n = len(batch.actions)
            total += float(self.ema.model.loss(batch.actions, batch.cond)) * n
            count += n
        return total / count

    def train_step(self, batch) -> torch.Tensor | None:
        """One AdamW step on `batch`, then the EMA cadence; returns the detached loss (a scalar tensor).

        With `train.nan_policy=skip_batch` a batch whose loss is not finite makes no step and returns None.
        """
        loss = self.model.loss(batch.actions, batch.cond)
        if self.skip_nonfinite and not bool(torch.isfinite(loss)):
            self.n_batches += 1
            return None
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        # As DPPO: the global batch counter is tested before it is incremented (EMA steps at batches 0, 10, 20...).
        if self.n_batches % self.update_ema_freq == 0:
            if self.epoch < self.epoch_start_ema:
                self.ema.copy_from_model()
            else:
                self.ema.update()
        self.n_batches += 1
        return loss.detach()

    def train_epoch(self) -> float:
        """One shuffled pass over the training windows; returns the mean loss of the batches that made a step.

        Raises:
            DivergedError: the loss (any batch's: their sum is read once) or a weight is not finite, or every
                batch was skipped (`train.nan_policy=skip_batch`).
        """
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        n = skipped = 0
        first = self.n_batches
        for batch in self.dataset.iterate(self.train_cfg.batch_size, generator=self.generator):
            loss = self.train_step(batch)
            if loss is None:
                skipped += 1
                continue
            loss_sum += loss
            n += 1
        mean = float(loss_sum) / max(n, 1)
        where = f"epoch {self.epoch} (batches {first}-{self.n_batches - 1})"
        lr = f"train.learning_rate={self.train_cfg.learning_rate}"
        if not math.isfinite(mean) or (n == 0 and skipped):
            raise diverged("loss", where, self.logdir, lr)
        bad = non_finite_parameters([("model", self.model), ("ema", self.ema.model)])
        if bad:
            raise diverged(f"weights ({bad[0]})", where, self.logdir, lr)
        if skipped:
            log.warning("epoch %d: skipped %d batch(es) with a non-finite loss", self.epoch, skipped)
        self.skipped_batches = skipped
        return mean

    def run(self) -> None:
        t = self.train_cfg
        if self.resumed_from is not None and self.epoch >= t.n_epochs:
            raise ConfigError(
                f"resume={self.resumed_from}: that run already finished {self.epoch} epochs (train.n_epochs="
                f"{t.n_epochs}); raise train.n_epochs to train it further"
            )
        val_freq = t.val_freq
        start = time.perf_counter()
        bar = tqdm(range(self.epoch + 1, t.n_epochs + 1), desc="pretrain", initial=self.epoch, total=t.n_epochs)
        for epoch in bar:
            self.epoch = epoch
            metrics = {"pretrain/loss": self.train_epoch(), "pretrain/lr": self.scheduler.get_last_lr()[0]}
            if self.skip_nonfinite:
                metrics["pretrain/skipped_batches"] = self.skipped_batches
            self.scheduler.step()
            if epoch % val_freq == 0 or epoch == t.n_epochs:
                val = self.validation_loss()
                if val is not None:
                    metrics["pretrain/val_loss"] = val
            metrics["time/elapsed_s"] = time.perf_counter() - start
            bar.set_postfix(loss=f"{metrics['pretrain/loss']:.4f}")
            self.logger.log(metrics, step=epoch, console=(epoch % t.log_freq == 0 or epoch == t.n_epochs))
            if epoch % t.save_model_freq == 0 or epoch == t.n_epochs:
                self.save()
        self.logger.close()
