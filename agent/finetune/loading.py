"""Building the policy of a fine-tuning or evaluation config and loading checkpoint weights into it.

Which weights are loaded (docs/algorithms.md#checkpoints-and-weights, with two deliberate fixes):

* From a pretraining checkpoint, every policy family loads the **EMA** weights (`ckpt["ema"]`). DPPO does
  so for diffusion but loads the non-EMA weights for Gaussian/GMM fine-tuning and for evaluating a pretrained
  diffusion policy (docs/algorithms.md#d9-ema-weights-everywhere); here fine-tuning and evaluation always start
  from the same weights. A diffusion policy fine-tuning K' > 0 steps loads them through `load_base_state_dict`
  (frozen base + trainable copy).
* From a fine-tuning checkpoint, the whole policy (`ckpt["model"]`: frozen base and fine-tuned copy) is loaded,
  and its `ft_denoising_steps` must equal the config's: a different K' would silently route the denoising steps to
  different networks, so it is a `ConfigError`, never a different policy.

Before any weights are loaded, the checkpoint's own config is compared with this one (dims, horizons, denoising
steps, the policy class and every `model.network` key), and a difference is a `ConfigError` naming the key.

Checkpoints written by DPPO itself (the published ones that `script/dataset/download.py` fetches)
hold the same tensors under other names; `from_dppo_checkpoint` renames them into this toolkit's (see
`dppo_key_map` for the rules) before the steps above, and a name it cannot place is a `ConfigError` naming it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, cast

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from agent.checkpoint import list_checkpoints, load_checkpoint, non_finite_weights
from agent.config import instantiate
from agent.errors import ConfigError, DataError
from agent.schemas import RunKeys
from model.base import Policy
from model.common.critic import CriticObs
from model.common.mlp import MLP, ResidualBlock
from model.common.transformer import ObsToChunkTransformer
from model.common.vision import VisionNetwork
from model.diffusion.diffusion import DiffusionModel
from model.diffusion.unet import ConvBlock1D, ResidualBlock1D, Unet1D
from model.diffusion.vision import VisionDenoiser
from model.encoder.vit import PatchEmbed, SelfAttention, TransformerLayer, ViT, ViTEncoder
from model.gaussian.mlp import GaussianMLP
from model.gaussian.transformer import GaussianTransformer
from model.gmm.mlp import GMMMLP
from model.gmm.transformer import GMMTransformer

log = logging.getLogger(__name__)

# Top-level keys that fix the network's input/output shapes or the noise schedule.
ARCHITECTURE_KEYS = ("obs_dim", "action_dim", "horizon_steps", "cond_steps", "denoising_steps")
# model.network keys fine-tuning may change on purpose (exploration noise of Gaussian/GMM heads, dropout).
TUNABLE_NETWORK_KEYS = frozenset({"dropout", "std_min", "std_max", "learn_fixed_std", "fixed_std"})


def is_diffusion(policy: Policy) -> bool:
    """Whether `policy` is a diffusion policy, whose noise schedule fixes `denoising_steps` (a flow policy may
    integrate with another number of steps than it was pretrained with)."""
    return isinstance(policy, DiffusionModel)


def build_policy(cfg: DictConfig, exclude_keys: Iterable[str] = ()) -> Policy:
    """Instantiate the policy described by `cfg.model`, leaving out the algorithm's own `model.*` keys.

    DPPO's fine-tuning configs keep the algorithm's knobs (gamma_denoising, clip_ploss_coef, critic, ...) in the
    `model` block beside the policy's; `exclude_keys` names those so the policy class sees only its own.

    Args:
        cfg: the full config.
        exclude_keys: `model.*` keys that belong to the algorithm.

    Returns:
        the policy module (on CPU).

    Raises:
        ConfigError: `model._target_` builds something that is not a `model.base.Policy`.
    """
    node = cast(DictConfig, OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True)))  # from a dict
    for key in exclude_keys:
        if key in node:
            del node[key]
    policy = instantiate(node, "model")
    if not isinstance(policy, Policy):
        raise ConfigError(
            f"model._target_={node.get('_target_')} builds a {type(policy).__name__}, not a policy; name a "
            "model.base.Policy class (DiffusionModel, GaussianModel, GMMModel)"
        )
    return policy


def resolve_checkpoint(path: str | Path) -> Path:
    """Turn a checkpoint reference into a `state_<N>.pt` file.

    Accepts a file, a run folder (its latest `checkpoint/state_<N>.pt`), or an experiment folder holding several
    dated runs (the newest run's latest checkpoint), so the configs' default `base_policy_path`
    (`${log_dir}/<suite>-pretrain/<pretrain name>`) finds the last pretraining run without a date in the path.
    In a folder, a checkpoint with non-finite weights (from a run that diverged before such checkpoints were
    refused) is passed over for the next newest one, with a warning; a file given by name is returned as it is.

    Raises:
        DataError: nothing loadable there.
    """
    p = Path(str(path))
    if p.is_file():
        return p
    if p.is_dir():
        own = [c for _, c in reversed(list_checkpoints(p))]
        if own:
            candidates = own
        else:  # an experiment folder: the runs newest first (by their latest checkpoint), each newest first
            runs = [list_checkpoints(d) for d in p.iterdir() if d.is_dir()]
            runs = sorted((r for r in runs if r), key=lambda r: r[-1][1].stat().st_mtime, reverse=True)
            candidates = [c for run in runs for _, c in reversed(run)]
        for candidate in candidates:
            if checkpoint_is_finite(candidate):
                return candidate
            log.warning("%s holds non-finite weights (a diverged run): passed over", candidate)
    raise DataError(f"no checkpoint at {p} (give a state_<N>.pt file, a run folder or an experiment folder)")


_FINITE: dict[tuple[str, float], bool] = {}


def checkpoint_is_finite(path: Path) -> bool:
    """Whether a checkpoint's weights are all finite (`non_finite_weights`); a file that cannot be read safely
    counts as finite here, so that loading it later reports why. Remembered per path and modification time."""
    key = (str(path), path.stat().st_mtime)
    if key not in _FINITE:
        try:
            _FINITE[key] = not non_finite_weights(load_checkpoint(path))
        except DataError:
            _FINITE[key] = True
    return _FINITE[key]


def find_checkpoint(path: str | Path) -> Path | None:
    """`resolve_checkpoint`, or None when nothing is there."""
    try:
        return resolve_checkpoint(path)
    except DataError:
        return None


def pretrain_command(run: RunKeys) -> str:
    """The command that writes the pretraining checkpoint a run with these top-level keys expects."""
    suite, env_name = run.suite or "<suite>", run.env_name or "<task>"
    policy = run.policy_name or "diffusion_mlp"
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
    here = cast("dict[str, Any]", OmegaConf.to_container(cfg, resolve=True))  # a DictConfig gives a dict

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
    theirs_cls, ours_cls = saved_model.get("_target_"), our_model.get("_target_")
    if theirs_cls is not None and theirs_cls != ours_cls and not _extends(ours_cls, theirs_cls):
        raise mismatch("model._target_", theirs_cls, ours_cls)
    saved_net, our_net = saved_model.get("network") or {}, our_model.get("network") or {}
    for key in sorted(set(saved_net) & set(our_net)):
        if key in TUNABLE_NETWORK_KEYS:
            continue
        if _plain(saved_net[key]) != _plain(our_net[key]):
            theirs, ours = (_encoder_choice(net.get(key)) for net in (saved_net, our_net))
            if key == "encoder" and theirs != ours and theirs is not None:
                raise ConfigError(
                    f"base_policy_path {path} was trained with encoder={theirs} (model.network.encoder) but this "
                    f"config has encoder={ours}; add encoder={theirs} to the command line"
                )
            raise mismatch(f"model.network.{key}", saved_net[key], our_net[key])


def _extends(ours: Any, theirs: Any) -> bool:
    """Whether the policy class named `ours` is the class named `theirs` or a subclass of it (ExactDiffusion loads a
    DiffusionModel's weights)."""
    from hydra.utils import get_class

    try:
        return issubclass(get_class(str(ours)), get_class(str(theirs)))
    except Exception:  # a class that cannot be imported: the names decide
        return False


# The image encoder classes of the `encoder=` choice (cfg/encoder/), for a one-line mismatch message.
ENCODER_CHOICES = {"model.encoder.vit.ViTEncoder": "vit", "model.encoder.resnet.ResNetEncoder": "resnet"}


def _encoder_choice(node: Any) -> str | None:
    target = node.get("_target_") if isinstance(node, Mapping) else None
    return ENCODER_CHOICES.get(target, target) if isinstance(target, str) else None


def _load_tolerant(policy: Policy, state: Mapping[str, torch.Tensor], path: Path) -> None:
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
    policy: Policy, ckpt: Mapping[str, Any], cfg: DictConfig, path: Path, for_eval: bool = False
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
        DataError: the checkpoint's weights are not all finite.
    """
    bad = non_finite_weights(dict(ckpt))
    if bad:
        raise DataError(
            f"{path} holds non-finite weights ({bad[0]}): its run diverged; use an earlier checkpoint of that run"
        )
    chain = policy.has_base_policy  # diffusion or flow: a frozen base network and K' fine-tuned steps
    if is_dppo_checkpoint(ckpt):
        ckpt = from_dppo_checkpoint(ckpt, policy, path)
    check_compatible(ckpt, cfg, path, is_diffusion(policy))
    kind = checkpoint_kind(ckpt)
    ours = policy.ft_denoising_steps
    if kind == "finetune":
        theirs = checkpoint_ft_steps(ckpt)
        if chain and theirs != ours:
            raise ConfigError(
                f"{path} is a fine-tuning checkpoint with ft_denoising_steps={theirs} but this config has "
                f"ft_denoising_steps={ours}; set ft_denoising_steps={theirs} to use its fine-tuned weights"
            )
        if chain:
            state = ckpt["model"]
            if for_eval and isinstance(policy, DiffusionModel) and policy.eta is None:
                # DDIM fine-tuning trains an eta (the exploration noise of its chain); evaluation samples
                # deterministically (eta = 0), so an evaluation config without an eta module drops it.
                state = {k: v for k, v in state.items() if not k.startswith("eta.")}
            _load_strict(policy, state, path, "checkpoint")
        else:  # a learned exploration std may be absent from an evaluation config: it does not change the mean
            _load_tolerant(policy, ckpt["model"], path)
        return kind
    if "ema" not in ckpt:
        raise DataError(f"{path} is a pretraining checkpoint without EMA weights ('ema')")
    if chain and for_eval and ours != 0:
        raise ConfigError(
            f"{path} is a pretraining checkpoint (no fine-tuned denoising steps) but this config has "
            f"ft_denoising_steps={ours}; set ft_denoising_steps=0 to evaluate it"
        )
    if chain:
        try:
            policy.load_base_state_dict(ckpt["ema"])
        except RuntimeError as exc:
            raise ConfigError(f"base_policy_path {path} does not fit this policy: {_shape_error(exc)}") from exc
    else:
        _load_tolerant(policy, ckpt["ema"], path)
    return kind


# ---------------------------------------------------------------------------------------------------------------
# DPPO-format checkpoints
#
# DPPO saves {"epoch", "model", "ema"} (pretraining) or {"itr", "model"} (fine-tuning) with no "kind" and no
# config. Its networks hold the same tensors as ours under other module names:
#
#   what (our class)                  ours                                  DPPO
#   plain MLP (MLP), layer i          <mlp>.layers.<j>  (flat Sequential:   <mlp>.moduleList.<i>.linear_1
#                                     Linear [LayerNorm] [Dropout] [act])   <mlp>.moduleList.<i>.norm_1 (LayerNorm)
#   residual block (ResidualBlock)    <blk>.layers.<j> (Linear 1, 2;        <blk>.l1, <blk>.l2 (norm1, norm2)
#                                     LayerNorm 1, 2)
#   ResidualMLP, DiffusionMLP         same names (layers.<k>, time_embedding.<k>, cond_mlp, mlp_mean)
#   Gaussian, learned std (GaussianMLP)  mean_head / logvar_head           mlp_mean / mlp_logvar .moduleList.0.linear_1
#   Gaussian/GMM learned fixed std    std.logvar  (GMM: (M, Da))            logvar  (GMM: flat (M * Da,))
#   GMM mixture logits (GMMMLP)       mlp_logits                            mlp_weights
#   UNet residual block (ResidualBlock1D)  conv1, conv2                     blocks.0, blocks.1
#   UNet conv block (ConvBlock1D)     block.<j> (Conv1d, GroupNorm at 1)    block.<j> (GroupNorm at 2)
#   UNet down/up-sampling (Unet1D)    <down|up>_modules.<i>.2 (bare conv)   <down|up>_modules.<i>.2.conv
#   Gaussian/GMM transformer          trunk, head (GMM: logits_head)        transformer, transformer.head (modes_head)
#   transformer trunk                 cond_emb, query_pos_emb, final_norm   cond_obs_emb, pos_emb, ln_f
#   pixel nets (VisionDenoiser;       encoder.trunk, encoder.compress.<i>,  backbone.vit, compress (one camera) or
#   VisionNetwork: Gaussian, critic)  denoiser.<rest> / head.<rest>         compress<i+1>, <rest> (on the net itself)
#   ViT (ViT, TransformerLayer)       layers.<i>.{norm1, attn.qkv, attn.out, net.<i>.{layer_norm1, mha.qkv_proj,
#                                     norm2, mlp.0, mlp.2}, patch_embed.proj  mha.out_proj, layer_norm2, linear1,
#                                                                           linear2}, patch_embed.embed
#   state critic (CriticObs)          mlp                                   Q1
#   Q critic (CriticObsAct)           Q1, Q2                                Q1, Q2
#
# The table of names is generated from the module the weights go into (`dppo_key_map`), so every option that
# changes our flat layer indices (LayerNorm, dropout, Identity activations) is accounted for. DPPO's
# `logvar_min`/`logvar_max` are dropped: here the std bounds always come from the config
# (docs/algorithms.md#d7-gaussian-std-bounds, model/gaussian/mlp.py). Other networks (the ResNet encoder, which DPPO
# does not have) keep their names and therefore load only if DPPO's names happen to be ours; otherwise the keys are
# reported as unmatched.

# Children renamed on the way to DPPO's names (per class of the parent module).
_DPPO_CHILD_NAMES: dict[type, dict[str, str]] = {
    GaussianMLP: {"mean_head": "mlp_mean.moduleList.0.linear_1", "logvar_head": "mlp_logvar.moduleList.0.linear_1"},
    GMMMLP: {"mlp_logits": "mlp_weights"},
    CriticObs: {"mlp": "Q1"},
    ResidualBlock1D: {"conv1": "blocks.0", "conv2": "blocks.1"},
    GaussianTransformer: {"trunk": "transformer", "head": "transformer.head"},
    GMMTransformer: {"trunk": "transformer", "head": "transformer.head", "logits_head": "modes_head"},
    ObsToChunkTransformer: {"cond_emb": "cond_obs_emb", "final_norm": "ln_f"},
    VisionDenoiser: {"encoder": "", "denoiser": ""},  # DPPO's VisionDiffusionMLP holds both on itself
    VisionNetwork: {"encoder": "", "head": ""},  # DPPO's VisionGaussian_MLP and ViTCritic likewise
    ViT: {"layers": "net"},
    TransformerLayer: {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn": "mha"},
    SelfAttention: {"qkv": "qkv_proj", "out": "out_proj"},
}
# Tensors registered on a module itself, renamed (per class of the module).
_DPPO_OWN_NAMES: dict[type, dict[str, str]] = {ObsToChunkTransformer: {"query_pos_emb": "pos_emb"}}
# Children whose tensors DPPO keeps on the parent: the Gaussian/GMM StateIndependentStd (std.logvar -> logvar).
_MERGED_CHILDREN = frozenset({"std"})
# Key segments only DPPO's modules have, used to recognise its checkpoints.
_DPPO_SEGMENT = re.compile(r"(^|\.)(moduleList|linear_1|l1|l2|norm1|norm2|logvar_min|logvar_max|mlp_weights)(\.|$)")
# Modules of DPPO's fine-tuning models that are not part of the policy (the algorithm's critics and targets).
_DPPO_ALGORITHM_MODULES = frozenset({"critic", "critic_target", "critic_q", "target_q", "critic_v", "actor_target"})
_TDF_RE = re.compile(r"_tdf(\d+)(?:_|$)")


def _own_tensor_names(module: nn.Module) -> list[str]:
    """Names of the parameters and persistent buffers registered on `module` itself (not its children)."""
    names = [n for n, _ in module.named_parameters(recurse=False)]
    skip: set[str] = getattr(module, "_non_persistent_buffers_set", set())
    return names + [n for n, _ in module.named_buffers(recurse=False) if n not in skip]


def _add_dppo_names(module: nn.Module, ours: str, theirs: str, out: dict[str, str]) -> None:
    own = _DPPO_OWN_NAMES.get(type(module), {})
    for name in _own_tensor_names(module):
        out[ours + name] = theirs + own.get(name, name)
    if isinstance(module, MLP):  # flat Sequential -> moduleList.<layer>.{linear_1, norm_1}
        layer = -1
        for j, child in enumerate(module.layers):
            if isinstance(child, nn.Linear):
                layer += 1
                _add_dppo_names(child, f"{ours}layers.{j}.", f"{theirs}moduleList.{layer}.linear_1.", out)
            elif isinstance(child, nn.LayerNorm):
                _add_dppo_names(child, f"{ours}layers.{j}.", f"{theirs}moduleList.{layer}.norm_1.", out)
            else:  # dropout, activations: no tensors, but keep any there are under our names
                _add_dppo_names(child, f"{ours}layers.{j}.", f"{theirs}moduleList.{layer}.{j}.", out)
        return
    if isinstance(module, ResidualBlock):  # [LN] act Linear [LN] act Linear -> norm1 l1 norm2 l2
        counts = {nn.Linear: 0, nn.LayerNorm: 0}
        for j, child in enumerate(module.layers):
            kind = type(child) if type(child) in counts else None
            if kind is None:
                _add_dppo_names(child, f"{ours}layers.{j}.", f"{theirs}layers.{j}.", out)
                continue
            counts[kind] += 1
            name = f"{'l' if kind is nn.Linear else 'norm'}{counts[kind]}"
            _add_dppo_names(child, f"{ours}layers.{j}.", f"{theirs}{name}.", out)
        return
    if isinstance(module, ConvBlock1D):  # Conv1d [GroupNorm] act -> DPPO's GroupNorm sits at index 2
        for j, child in enumerate(module.block):
            k = 2 if isinstance(child, nn.GroupNorm) else j
            _add_dppo_names(child, f"{ours}block.{j}.", f"{theirs}block.{k}.", out)
        return
    if isinstance(module, ViTEncoder):  # trunk -> backbone.vit; one compression head per camera
        _add_dppo_names(module.trunk, f"{ours}trunk.", f"{theirs}backbone.vit.", out)
        heads = list(module.compress)
        for i, head in enumerate(heads):
            name = "compress" if len(heads) == 1 else f"compress{i + 1}"
            _add_dppo_names(head, f"{ours}compress.{i}.", f"{theirs}{name}.", out)
        return
    if isinstance(module, PatchEmbed):  # DPPO keeps an Identity where the optional GroupNorm is left out
        shift = 0 if any(isinstance(m, nn.GroupNorm) for m in module.proj) else 1
        for j, child in enumerate(module.proj):
            _add_dppo_names(child, f"{ours}proj.{j}.", f"{theirs}embed.{j + shift if j else 0}.", out)
        return
    if isinstance(module, TransformerLayer):  # its MLP's two Linear layers are linear1, linear2
        for name, child in module.named_children():
            if name == "mlp":
                linears = [(j, m) for j, m in enumerate(cast(nn.Sequential, child)) if isinstance(m, nn.Linear)]
                for n, (j, linear) in enumerate(linears, start=1):
                    _add_dppo_names(linear, f"{ours}mlp.{j}.", f"{theirs}linear{n}.", out)
            else:
                renamed = _DPPO_CHILD_NAMES[TransformerLayer].get(name, name)
                _add_dppo_names(child, f"{ours}{name}.", f"{theirs}{renamed}.", out)
        return
    if isinstance(module, Unet1D):  # DPPO wraps each down/up-sampling conv as `.conv`
        for name, child in module.named_children():
            if name not in ("down_modules", "up_modules"):
                _add_dppo_names(child, f"{ours}{name}.", f"{theirs}{name}.", out)
                continue
            for i, level in enumerate(cast(nn.ModuleList, child)):
                for j, part in enumerate(cast(nn.ModuleList, level)):
                    wrap = ".conv" if isinstance(part, nn.Conv1d | nn.ConvTranspose1d) else ""
                    _add_dppo_names(part, f"{ours}{name}.{i}.{j}.", f"{theirs}{name}.{i}.{j}{wrap}.", out)
        return
    renames = _DPPO_CHILD_NAMES.get(type(module), {})
    for name, child in module.named_children():
        if name in _MERGED_CHILDREN or renames.get(name) == "":
            target = theirs
        else:
            target = f"{theirs}{renames.get(name, name)}."
        _add_dppo_names(child, f"{ours}{name}.", target, out)


def dppo_key_map(module: nn.Module) -> dict[str, str]:
    """DPPO's name for every key of `module.state_dict()` (our key -> DPPO key); see the table above.

    Works on any module: a policy (`network.*`, `actor_ft.*`, `eta.*`), a bare network, or a critic.
    """
    out: dict[str, str] = {}
    _add_dppo_names(module, "", "", out)
    for key in module.state_dict():  # anything the walk did not reach keeps its name
        out.setdefault(key, key)
    return out


def is_dppo_checkpoint(ckpt: Mapping[str, Any]) -> bool:
    """Whether `ckpt` was written by DPPO rather than this toolkit.

    This toolkit always writes "kind" and "config"; DPPO writes neither, and its module names (`moduleList`,
    `l1`, `logvar_min`, ...) never occur in ours.
    """
    if "kind" in ckpt:
        return False
    keys = [k for part in ("model", "ema") if isinstance(ckpt.get(part), Mapping) for k in ckpt[part]]
    if any(_DPPO_SEGMENT.search(str(k)) for k in keys):
        return True
    return "config" not in ckpt and ("epoch" in ckpt or "itr" in ckpt)


def _unmatched_error(path: Path, keys: list[str]) -> ConfigError:
    shown = ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
    return ConfigError(
        f"{path} is a DPPO checkpoint whose keys do not map onto this policy: {shown}; MLP and UNet diffusion, MLP "
        "and transformer Gaussian and GMM networks (and their critics) are translated, so check model.network "
        "against the policy that wrote it"
    )


def translate_dppo_state_dict(
    module: nn.Module, state: Mapping[str, torch.Tensor], path: Path, drop: Iterable[str] = ()
) -> dict[str, torch.Tensor]:
    """Rename a DPPO state dict into `module`'s key names (tensors are not copied).

    Args:
        module: what the weights are for (its `dppo_key_map` defines the names).
        state: DPPO's state dict.
        path: the checkpoint's path (for messages).
        drop: top-level module names to leave out (e.g. DPPO's duplicate `actor`).

    Returns:
        the state dict under our names. DPPO's `logvar_min`/`logvar_max` are left out (the config's bounds apply);
        a GMM's flat learned `logvar` (M * Da,) is reshaped to ours (M, Da).

    Raises:
        ConfigError: naming the DPPO keys that have no place in `module`.
    """
    ours_of = {theirs: ours for ours, theirs in dppo_key_map(module).items()}
    targets = module.state_dict()
    drop = set(drop)
    out: dict[str, torch.Tensor] = {}
    unmatched: list[str] = []
    for key, value in state.items():
        if key.split(".", 1)[0] in drop:
            continue
        ours = ours_of.get(key)
        if ours is None:
            if key.rsplit(".", 1)[-1] in ("logvar_min", "logvar_max"):
                log.info(
                    "%s: %s=%.4g from the checkpoint is not used (the config's std bounds apply)",
                    path,
                    key,
                    float(value),
                )
                continue
            unmatched.append(key)
            continue
        target = targets[ours]
        if value.shape != target.shape and value.numel() == target.numel() and ours.endswith("logvar"):
            value = value.reshape(target.shape)
        out[ours] = value
    if unmatched:
        raise _unmatched_error(path, unmatched)
    return out


def _dppo_ft_steps_hint(path: Path) -> int | None:
    """K' of a DPPO fine-tuning run: its `.hydra/config.yaml` beside `checkpoint/`, else `_tdf<K'>` in its path."""
    run = path.parent.parent if path.parent.name == "checkpoint" else path.parent
    hydra_cfg = run / ".hydra" / "config.yaml"
    if hydra_cfg.is_file():
        try:
            saved = OmegaConf.load(hydra_cfg)
        except Exception:  # an unreadable side file only loses the hint
            saved = None
        for key in ("ft_denoising_steps", "model.ft_denoising_steps"):
            value = OmegaConf.select(saved, key, default=None, throw_on_resolution_failure=False) if saved else None
            if isinstance(value, int):
                return value
    for folder in (run, run.parent):
        match = _TDF_RE.search(folder.name)
        if match:
            return int(match.group(1))
    return None


def from_dppo_checkpoint(ckpt: Mapping[str, Any], policy: Policy, path: Path) -> dict[str, Any]:
    """Turn a DPPO checkpoint into this toolkit's layout for `policy`.

    * Pretraining {"epoch", "model", "ema"}: the EMA weights (`network.*`) are renamed; kind "pretrain".
    * Fine-tuning {"itr", "model"}: `network.*`, `actor_ft.*` and `eta.*` are renamed into the policy. DPPO's
      `actor.*` is left out (for diffusion the same frozen module as `network`; for Gaussian/GMM the frozen
      pretrained copy, while `network` = `actor_ft` is the fine-tuned one), as are the algorithm's critics and
      targets, which live outside the policy here. A Gaussian/GMM `actor_ft.*` (= `network.*`) is left out too.
      K' is taken from the run's `.hydra/config.yaml` or a `_tdf<K'>` folder name; without either, the config's
      ft_denoising_steps is trusted when it is > 0, and is an error when it is 0 while the checkpoint has
      fine-tuned denoisers (`actor_ft.*`).

    Raises:
        ConfigError: keys with no place in the policy, or an undeterminable K'.
    """
    diffusion = is_diffusion(policy)
    ours_keys = policy.state_dict()
    if "ema" in ckpt:
        model = translate_dppo_state_dict(policy, ckpt["ema"], path)
        return {"kind": "pretrain", "epoch": ckpt.get("epoch"), "ema": model}
    state: Mapping[str, torch.Tensor] = ckpt["model"]
    drop = {"actor"} | {k.split(".", 1)[0] for k in state} & _DPPO_ALGORITHM_MODULES
    if not diffusion:
        drop.add("actor_ft")
    if not any(k.startswith("eta.") for k in ours_keys):
        drop.add("eta")  # this policy has no eta module (DDPM sampling never reads one)
    has_ft = any(k.startswith("actor_ft.") for k in state)
    ft_steps = 0
    if diffusion and has_ft:
        ours = policy.ft_denoising_steps
        hint = _dppo_ft_steps_hint(path)
        if hint is None and ours == 0:
            raise ConfigError(
                f"{path} is a DPPO fine-tuning checkpoint with fine-tuned denoising steps (actor_ft) but its "
                "ft_denoising_steps cannot be determined (no .hydra/config.yaml beside checkpoint/, no _tdf<K> in its "
                "folder name); set ft_denoising_steps=<the value it was fine-tuned with>"
            )
        if hint is None:
            log.warning("%s: DPPO checkpoint without its K'; trusting ft_denoising_steps=%d", path, ours)
        ft_steps = ours if hint is None else hint
        if ft_steps != ours:  # the general check then names both values; nothing to translate into
            return {"kind": "finetune", "ft_denoising_steps": ft_steps, "model": {}}
    log.info("%s: DPPO checkpoint; %s not used by the policy", path, sorted(drop & {k.split(".")[0] for k in state}))
    model = translate_dppo_state_dict(policy, state, path, drop)
    return {"kind": "finetune", "itr": ckpt.get("itr"), "ft_denoising_steps": ft_steps, "model": model}


def warm_start_modules(modules: Mapping[str, nn.Module], saved: Mapping[str, Any], path: Path) -> list[str]:
    """Load the algorithm modules (critics, targets, temperature) that a fine-tuning checkpoint of this toolkit holds
    under the same names and shapes (Cal-QL's online stage from its offline run); optimiser states are not taken.
    A module absent or of another shape keeps its initial weights (logged). Returns the names loaded."""
    loaded = []
    for name, module in modules.items():
        state = saved.get(name)
        if not isinstance(state, Mapping):
            continue
        ours = module.state_dict()
        if set(state) != set(ours) or any(tuple(state[k].shape) != tuple(v.shape) for k, v in ours.items()):
            log.warning("%s: its %s does not fit this one; it starts from scratch", path, name)
            continue
        module.load_state_dict(state)
        loaded.append(name)
    if loaded:
        log.info("%s: %s taken from the checkpoint (a warm start; the optimisers start afresh)", path, loaded)
    return loaded


def warm_start_critics(modules: Mapping[str, nn.Module], ckpt: Mapping[str, Any], path: Path) -> list[str]:
    """Load the critics of a DPPO fine-tuning checkpoint into an algorithm's modules of the same names (`critic`,
    `critic_v`, ...), and each loaded critic's weights into its `<name>_target` copy too.

    A critic whose DPPO weights are absent or do not fit keeps its initial weights (logged): the actor's weights
    are what a DPPO checkpoint is loaded for. Returns the names of the critics loaded.
    """
    loaded = []
    for name, module in modules.items():
        if name.endswith("_target") or not any(str(k).startswith(f"{name}.") for k in ckpt.get("model") or {}):
            continue
        try:
            state = dppo_critic_state_dict(module, ckpt, path, name)
        except ConfigError as exc:
            log.warning("%s: its %s does not fit this one (%s); it starts from scratch", path, name, exc)
            continue
        ours = module.state_dict()
        misfit = [k for k in ours if k not in state or tuple(state[k].shape) != tuple(ours[k].shape)]
        if misfit:  # checked first: load_state_dict would copy the tensors that fit before failing
            log.warning("%s: its %s does not fit this one (%s differs); it starts from scratch", path, name, misfit[0])
            continue
        module.load_state_dict(state)
        if f"{name}_target" in modules:
            modules[f"{name}_target"].load_state_dict(module.state_dict())
        loaded.append(name)
    if loaded:
        log.info("%s: critic weights %s taken from the DPPO checkpoint", path, loaded)
    return loaded


def dppo_critic_state_dict(critic: nn.Module, ckpt: Mapping[str, Any], path: Path, name: str = "critic") -> dict:
    """The `name.*` weights of a DPPO fine-tuning checkpoint, renamed for `critic` (CriticObs: Q1 -> mlp;
    CriticObsAct: Q1/Q2 as they are, their MLPs renamed). For an algorithm that wants to start from DPPO's critic.

    Raises:
        ConfigError: no such weights, or keys with no place in `critic`.
    """
    prefix = f"{name}."
    state = {k[len(prefix) :]: v for k, v in (ckpt.get("model") or {}).items() if k.startswith(prefix)}
    if not state:
        raise ConfigError(f"{path} holds no {name}.* weights")
    return translate_dppo_state_dict(critic, state, path)
