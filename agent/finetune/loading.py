"""Building the policy of a fine-tuning or evaluation config and loading checkpoint weights into it.

Which weights are loaded (reference 9.2, with two deliberate fixes):

* From a pretraining checkpoint, every policy family loads the **EMA** weights (`ckpt["ema"]`). The reference does
  so for diffusion but loads the non-EMA weights for Gaussian/GMM fine-tuning (quirk 7) and for evaluating a
  pretrained diffusion policy (quirk 8); here fine-tuning and evaluation always start from the same weights.
  A diffusion policy fine-tuning K' > 0 steps loads them through `load_base_state_dict` (frozen base + trainable
  copy).
* From a fine-tuning checkpoint, the whole policy (`ckpt["model"]`: frozen base and fine-tuned copy) is loaded,
  and its `ft_denoising_steps` must equal the config's: a different K' would silently route the denoising steps to
  different networks, so it is a `ConfigError`, never a different policy.

Before any weights are loaded, the checkpoint's own config is compared with this one (dims, horizons, denoising
steps, the policy class and every `model.network` key), and a difference is a `ConfigError` naming the key.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from agent.checkpoint import latest_checkpoint
from agent.config import instantiate
from agent.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# Top-level keys that fix the network's input/output shapes or the noise schedule.
ARCHITECTURE_KEYS = ("obs_dim", "action_dim", "horizon_steps", "cond_steps", "denoising_steps")
# model.network keys fine-tuning may change on purpose (exploration noise of Gaussian/GMM heads, dropout).
TUNABLE_NETWORK_KEYS = frozenset({"dropout", "std_min", "std_max", "learn_fixed_std", "fixed_std"})


def is_diffusion(policy: nn.Module) -> bool:
    """Whether `policy` is a diffusion policy with a frozen base (it has `load_base_state_dict`)."""
    return hasattr(policy, "load_base_state_dict")


def build_policy(cfg: DictConfig, exclude_keys: Iterable[str] = ()) -> nn.Module:
    """Instantiate the policy described by `cfg.model`, leaving out the algorithm's own `model.*` keys.

    DPPO's fine-tuning configs keep the algorithm's knobs (gamma_denoising, clip_ploss_coef, critic, ...) in the
    `model` block beside the policy's; `exclude_keys` names those so the policy class sees only its own.

    Args:
        cfg: the full config.
        exclude_keys: `model.*` keys that belong to the algorithm.

    Returns:
        the policy module (on CPU).
    """
    node = OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))
    for key in exclude_keys:
        if key in node:
            del node[key]
    return instantiate(node, "model")


def resolve_checkpoint(path: str | Path) -> Path:
    """Turn a checkpoint reference into a `state_<N>.pt` file.

    Accepts a file, a run folder (its latest `checkpoint/state_<N>.pt`), or an experiment folder holding several
    dated runs (the newest run's latest checkpoint), so the configs' default `base_policy_path`
    (`${log_dir}/<suite>-pretrain/<pretrain name>`) finds the last pretraining run without a date in the path.

    Raises:
        DataError: nothing loadable there.
    """
    p = Path(str(path))
    if p.is_file():
        return p
    if p.is_dir():
        latest = latest_checkpoint(p)
        if latest is not None:
            return latest
        runs = [latest_checkpoint(d) for d in p.iterdir() if d.is_dir()]
        runs = [r for r in runs if r is not None]
        if runs:
            return max(runs, key=lambda r: r.stat().st_mtime)
    raise DataError(f"no checkpoint at {p} (give a state_<N>.pt file, a run folder or an experiment folder)")


def find_checkpoint(path: str | Path) -> Path | None:
    """`resolve_checkpoint`, or None when nothing is there."""
    try:
        return resolve_checkpoint(path)
    except DataError:
        return None


def pretrain_command(cfg: DictConfig) -> str:
    """The command that writes the pretraining checkpoint this config expects."""
    suite = OmegaConf.select(cfg, "suite", default="<suite>")
    env_name = OmegaConf.select(cfg, "env_name", default="<task>")
    policy = OmegaConf.select(cfg, "policy_name", default="diffusion_mlp")
    return f"python script/run.py --config-name=pre_{policy} --config-dir=cfg/{suite}/pretrain/{env_name}"


def checkpoint_kind(ckpt: Mapping[str, Any]) -> str:
    """ "pretrain" (has EMA weights) or "finetune"."""
    kind = ckpt.get("kind")
    if kind in ("pretrain", "finetune"):
        return str(kind)
    return "pretrain" if "ema" in ckpt else "finetune"


def checkpoint_ft_steps(ckpt: Mapping[str, Any]) -> int:
    """Number of fine-tuned denoising steps K' the checkpoint's policy holds (0 for pretraining)."""
    if checkpoint_kind(ckpt) == "pretrain":
        return 0
    if "ft_denoising_steps" in ckpt:
        return int(ckpt["ft_denoising_steps"] or 0)
    return int((ckpt.get("config") or {}).get("ft_denoising_steps") or 0)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def check_compatible(ckpt: Mapping[str, Any], cfg: DictConfig, path: Path, uses_diffusion: bool) -> None:
    """Compare the checkpoint's config with `cfg` where the network's shape or function depends on it.

    Raises:
        ConfigError: naming the first mismatching key, both values and the fix.
    """
    saved = ckpt.get("config")
    if not isinstance(saved, Mapping):
        log.warning("checkpoint %s carries no config; only the weight shapes are checked", path)
        return
    here = OmegaConf.to_container(cfg, resolve=True)

    def mismatch(key: str, theirs: Any, ours: Any) -> ConfigError:
        return ConfigError(
            f"base_policy_path {path} was trained with {key}={theirs} but this config has {key}={ours}; "
            f"set {key}={theirs} or use a checkpoint trained with {ours}"
        )

    keys = [k for k in ARCHITECTURE_KEYS if uses_diffusion or k != "denoising_steps"]
    for key in keys:
        if key in saved and key in here and _plain(saved[key]) != _plain(here[key]):
            raise mismatch(key, saved[key], here[key])
    saved_model, our_model = saved.get("model") or {}, here.get("model") or {}
    if "_target_" in saved_model and saved_model["_target_"] != our_model.get("_target_"):
        raise mismatch("model._target_", saved_model["_target_"], our_model.get("_target_"))
    saved_net, our_net = saved_model.get("network") or {}, our_model.get("network") or {}
    for key in sorted(set(saved_net) & set(our_net)):
        if key in TUNABLE_NETWORK_KEYS:
            continue
        if _plain(saved_net[key]) != _plain(our_net[key]):
            raise mismatch(f"model.network.{key}", saved_net[key], our_net[key])


def _load_tolerant(policy: nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Load a Gaussian/GMM state dict, allowing only a learned fixed-std `logvar` to appear or disappear."""
    try:
        result = policy.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise ConfigError(f"base_policy_path {path} does not fit this policy: {_shape_error(exc)}") from exc
    bad = [k for k in [*result.missing_keys, *result.unexpected_keys] if not k.endswith("logvar")]
    if bad:
        raise ConfigError(
            f"base_policy_path {path} does not fit this policy: parameter {bad[0]} is "
            f"{'missing from' if bad[0] in result.missing_keys else 'unexpected in'} the checkpoint "
            "(check model.network against the pretraining config)"
        )
    if result.missing_keys:
        log.info(
            "%s not in the checkpoint: starts at its initial value (learned exploration std)",
            result.missing_keys,
        )


def _shape_error(exc: RuntimeError) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = [line for line in lines if "size mismatch" in line or "Missing key" in line or "Unexpected key" in line]
    return (detail or lines or [type(exc).__name__])[0]


def _load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], path: Path, what: str) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(f"{what} {path} does not fit this policy: {_shape_error(exc)}") from exc


def load_policy_weights(
    policy: nn.Module, ckpt: Mapping[str, Any], cfg: DictConfig, path: Path, for_eval: bool = False
) -> str:
    """Load a checkpoint's policy weights (see the module docstring for which ones).

    Args:
        policy: the freshly built policy.
        ckpt: the loaded checkpoint dict.
        cfg: this run's config (for the compatibility checks and K').
        path: the checkpoint's path (for messages).
        for_eval: evaluation (a pretraining checkpoint then requires K' = 0).

    Returns:
        "pretrain" or "finetune", the kind of checkpoint loaded.

    Raises:
        ConfigError: incompatible config, K' mismatch, or weights that do not fit.
    """
    diffusion = is_diffusion(policy)
    check_compatible(ckpt, cfg, path, diffusion)
    kind = checkpoint_kind(ckpt)
    ours = int(getattr(policy, "ft_denoising_steps", 0) or 0) if diffusion else 0
    if kind == "finetune":
        theirs = checkpoint_ft_steps(ckpt)
        if diffusion and theirs != ours:
            raise ConfigError(
                f"{path} is a fine-tuning checkpoint with ft_denoising_steps={theirs} but this config has "
                f"ft_denoising_steps={ours}; set ft_denoising_steps={theirs} to use its fine-tuned weights"
            )
        if diffusion:
            _load_strict(policy, ckpt["model"], path, "checkpoint")
        else:  # a learned exploration std may be absent from an evaluation config: it does not change the mean
            _load_tolerant(policy, ckpt["model"], path)
        return kind
    if "ema" not in ckpt:
        raise DataError(f"{path} is a pretraining checkpoint without EMA weights ('ema')")
    if diffusion and for_eval and ours != 0:
        raise ConfigError(
            f"{path} is a pretraining checkpoint (no fine-tuned denoising steps) but this config has "
            f"ft_denoising_steps={ours}; set ft_denoising_steps=0 to evaluate it"
        )
    if diffusion:
        try:
            policy.load_base_state_dict(ckpt["ema"])
        except RuntimeError as exc:
            raise ConfigError(f"base_policy_path {path} does not fit this policy: {_shape_error(exc)}") from exc
    else:
        _load_tolerant(policy, ckpt["ema"], path)
    return kind
