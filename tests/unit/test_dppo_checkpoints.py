"""Checkpoints written by DPPO itself load into this toolkit's policies.

The DPPO-format state dicts are synthetic: our own model's keys renamed into DPPO's names by rules written here
from the reference (independently of `dppo_key_map`), filled with random tensors, so each test checks that the
translation inverts the renaming exactly and that every tensor lands in the right place (`torch.equal`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra.utils import get_class
from omegaconf import DictConfig
from torch import nn

from agent.checkpoint import load_checkpoint
from agent.config import CFG_ROOT, compose, instantiate
from agent.errors import ConfigError
from agent.finetune.loading import (
    build_policy,
    dppo_critic_state_dict,
    dppo_key_map,
    is_dppo_checkpoint,
    load_policy_weights,
)
from model.common.critic import CriticObs, CriticObsAct

HOPPER_FT = ("gym/finetune/hopper-v2", "ft_ppo_diffusion_mlp")
HOPPER_EVAL = ("gym/eval/hopper-v2", "eval_diffusion_mlp")
AVOID_FT = "d3il/finetune/avoid_m1"
SMALL = "model.network.mlp_dims=[32,32,32]"


def build(where: tuple[str, str], overrides: list[str] = ()) -> tuple[DictConfig, nn.Module]:
    """Compose a config and build its policy the way fine-tuning / evaluation do."""
    cfg = compose(CFG_ROOT / where[0], where[1], ["wandb=null", "device=cpu", *overrides])
    algorithm = getattr(get_class(cfg._target_), "algorithm_class", None)
    return cfg, build_policy(cfg, getattr(algorithm, "model_keys", ()))


# ---------------------------------------------------------------- DPPO's names, from the reference's description
def _residual_block(key: str, layernorm: bool) -> str:
    """`...layers.<k>.layers.<j>.` (our block) -> `...layers.<k>.{l1, l2, norm1, norm2}.`"""
    names = {"0": "norm1", "2": "l1", "3": "norm2", "5": "l2"} if layernorm else {"1": "l1", "3": "l2"}
    return re.sub(r"(layers\.\d+)\.layers\.(\d)\.", lambda m: f"{m.group(1)}.{names[m.group(2)]}.", key)


def _plain_mlp(key: str, module: str, per_layer: int) -> str:
    """`<module>.layers.<j>.` -> `<module>.moduleList.<j // per_layer>.linear_1.` (Linear + activation per layer)."""
    return re.sub(
        rf"(^|\.){module}\.layers\.(\d+)\.",
        lambda m: f"{m.group(1)}{module}.moduleList.{int(m.group(2)) // per_layer}.linear_1.",
        key,
    )


def diffusion_rule(residual: bool = True, layernorm: bool = False, cond_mlp: bool = False) -> Callable[[str], str]:
    def rename(key: str) -> str:
        if cond_mlp:
            key = _plain_mlp(key, "cond_mlp", 2)
        return _residual_block(key, layernorm) if residual else _plain_mlp(key, "mlp_mean", 2)

    return rename


def gaussian_rule(key: str) -> str:
    key = _residual_block(key, layernorm=False)
    key = _plain_mlp(key, "mlp_base", 2)
    key = key.replace("mean_head.", "mlp_mean.moduleList.0.linear_1.")
    key = key.replace("logvar_head.", "mlp_logvar.moduleList.0.linear_1.")
    return key.replace("std.logvar", "logvar")


def gmm_rule(key: str) -> str:
    return _residual_block(key, layernorm=False).replace("mlp_logits.", "mlp_weights.").replace("std.logvar", "logvar")


def dppo_state(
    ours: dict[str, torch.Tensor], rename: Callable[[str], str], seed: int, prefix: str = "network."
) -> dict[str, torch.Tensor]:
    """Random tensors under DPPO's names for our keys that start with `prefix` (a GMM's logvar flattened)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in ours.items():
        if key.startswith(prefix):
            tensor = torch.randn(value.shape, generator=g)
            out[rename(key)] = tensor.flatten() if key.endswith("std.logvar") else tensor
    return out


def assert_landed(policy: nn.Module, dppo: dict[str, torch.Tensor], rename: Callable[[str], str], src: str, dst: str):
    """Every `dst.*` tensor of the policy equals DPPO's tensor of the `src.*` key it came from."""
    state = policy.state_dict()
    checked = 0
    for key, value in state.items():
        if key.startswith(f"{dst}."):
            theirs = dppo[rename(f"{src}.{key[len(dst) + 1 :]}")]
            assert torch.equal(value, theirs.reshape(value.shape)), key
            checked += 1
    assert checked > 0


# ---------------------------------------------------------------- names
def test_hopper_diffusion_names_are_the_references() -> None:
    _, policy = build(HOPPER_FT)
    names = {v for k, v in dppo_key_map(policy).items() if k.startswith("network.")}
    expected = {
        f"network.{m}.{p}"
        for m in ("time_embedding.1", "time_embedding.3", "mlp_mean.layers.0", "mlp_mean.layers.1.l1")
        + ("mlp_mean.layers.1.l2", "mlp_mean.layers.2")
        for p in ("weight", "bias")
    }
    assert names == expected


def test_learned_std_gaussian_names() -> None:
    _, policy = build(
        (AVOID_FT, "ft_ppo_gaussian_mlp"),
        ["model.network.fixed_std=null", "model.network.learn_fixed_std=false", "model.network.residual_style=false"],
    )
    names = {v.rsplit(".", 1)[0] for v in dppo_key_map(policy).values()}
    assert names == {
        "network.mlp_base.moduleList.0.linear_1",
        "network.mlp_base.moduleList.1.linear_1",
        "network.mlp_base.moduleList.2.linear_1",
        "network.mlp_mean.moduleList.0.linear_1",
        "network.mlp_logvar.moduleList.0.linear_1",
    }


def test_detection() -> None:
    assert is_dppo_checkpoint({"epoch": 3, "model": {"network.x.moduleList.0.linear_1.weight": 0}, "ema": {}})
    assert is_dppo_checkpoint({"itr": 3, "model": {"network.time_embedding.1.weight": 0}})
    assert not is_dppo_checkpoint({"kind": "pretrain", "epoch": 3, "model": {}, "ema": {}, "config": {}})


# ---------------------------------------------------------------- pretraining checkpoints
DIFFUSION_VARIANTS = {
    "residual": ([SMALL], diffusion_rule()),
    "residual_layernorm_cond_mlp": (
        [SMALL, "+model.network.cond_mlp_dims=[24,8]", "+model.network.use_layernorm=true"],
        diffusion_rule(layernorm=True, cond_mlp=True),
    ),
    "plain": ([SMALL, "model.network.residual_style=false"], diffusion_rule(residual=False)),
}


@pytest.mark.parametrize("variant", sorted(DIFFUSION_VARIANTS))
def test_dppo_diffusion_pretrain_checkpoint_for_finetuning_and_eval(variant: str, tmp_path: Path) -> None:
    overrides, rename = DIFFUSION_VARIANTS[variant]
    cfg, policy = build(HOPPER_FT, overrides)
    assert policy.ft_denoising_steps > 0
    ema = dppo_state(policy.state_dict(), rename, seed=0)
    path = tmp_path / "state_3000.pt"
    torch.save({"epoch": 3000, "model": dppo_state(policy.state_dict(), rename, seed=1), "ema": ema}, path)
    ckpt = load_checkpoint(path)

    assert load_policy_weights(policy, ckpt, cfg, path) == "pretrain"
    assert_landed(policy, ema, rename, "network", "network")  # the EMA weights, not "model"
    assert_landed(policy, ema, rename, "network", "actor_ft")  # the fine-tuned copy starts there

    cfg, policy = build(HOPPER_EVAL, [*overrides, "ft_denoising_steps=0"])
    assert load_policy_weights(policy, ckpt, cfg, path, for_eval=True) == "pretrain"
    assert_landed(policy, ema, rename, "network", "network")
    cfg, policy = build(HOPPER_EVAL, [*overrides, "ft_denoising_steps=5"])
    with pytest.raises(ConfigError, match="set ft_denoising_steps=0"):
        load_policy_weights(policy, ckpt, cfg, path, for_eval=True)


def unet_rule(key: str) -> str:
    """Our UNet names -> DPPO's: a residual block's conv1/conv2 are its blocks.0/blocks.1, a conv block's GroupNorm
    sits at index 2 (index 1 here), and the down/up-sampling convs are wrapped as `.conv`."""
    key = re.sub(r"\.conv([12])\.", lambda m: f".blocks.{int(m.group(1)) - 1}.", key)
    key = re.sub(r"\.block\.1\.", ".block.2.", key)
    return re.sub(r"((?:down|up)_modules\.\d+\.2)\.(weight|bias)$", r"\1.conv.\2", key)


def test_dppo_unet_pretrain_checkpoint_evaluates(tmp_path: Path) -> None:
    """A DPPO UNet pretraining checkpoint (robomimic can) loads into eval_diffusion_unet, every tensor in place; a
    few of DPPO's names are spelt out as the reference writes them."""
    cfg, policy = build(("robomimic/eval/can", "eval_diffusion_unet"))
    names = set(dppo_key_map(policy).values())
    for name in (
        "network.mid_modules.0.blocks.1.block.2.weight",
        "network.down_modules.0.2.conv.weight",
        "network.up_modules.0.2.conv.bias",
        "network.final_conv.0.block.2.bias",
        "network.down_modules.0.0.cond_encoder.0.weight",
    ):
        assert name in names, name
    ema = dppo_state(policy.state_dict(), unet_rule, seed=3)
    path = tmp_path / "state_8000.pt"
    torch.save({"epoch": 8000, "model": dppo_state(policy.state_dict(), unet_rule, seed=4), "ema": ema}, path)
    assert load_policy_weights(policy, load_checkpoint(path), cfg, path, for_eval=True) == "pretrain"
    assert_landed(policy, ema, unet_rule, "network", "network")


def transformer_rule(key: str) -> str:
    """Our Gaussian/GMM transformer names -> DPPO's: the trunk is `transformer` (cond_obs_emb, pos_emb, ln_f), the
    output head lives inside it, the GMM's mode logits are `modes_head` and a learned std is the parent's `logvar`."""
    for ours, theirs in (
        ("network.trunk.", "network.transformer."),
        (".cond_emb.", ".cond_obs_emb."),
        ("query_pos_emb", "pos_emb"),
        (".final_norm.", ".ln_f."),
        ("network.head.", "network.transformer.head."),
        ("logits_head.", "modes_head."),
        ("std.logvar", "logvar"),
    ):
        key = key.replace(ours, theirs)
    return key


@pytest.mark.parametrize("family", ["gaussian", "gmm"])
def test_dppo_transformer_pretrain_checkpoint(family: str, tmp_path: Path) -> None:
    cfg, policy = build(("robomimic/finetune/can", f"ft_ppo_{family}_transformer"))
    names = set(dppo_key_map(policy).values())
    expected = {"network.transformer.pos_emb", "network.transformer.ln_f.weight", "network.transformer.head.bias"}
    expected |= {"network.transformer.cond_obs_emb.weight", "network.transformer.decoder.layers.0.norm1.weight"}
    assert expected <= names
    assert ("network.modes_head.weight" in names) == (family == "gmm")
    ema = dppo_state(policy.state_dict(), transformer_rule, seed=5)
    path = tmp_path / "state_3000.pt"
    torch.save({"epoch": 3000, "model": ema, "ema": ema}, path)
    assert load_policy_weights(policy, load_checkpoint(path), cfg, path) == "pretrain"
    assert_landed(policy, ema, transformer_rule, "network", "network")


def vit_rule(key: str) -> str:
    """Our pixel diffusion policy (one camera) -> DPPO's VisionDiffusionMLP names: the MLP's tensors sit on the
    network itself (residual blocks as in the state policy), the ViT is `backbone.vit` (`net.<i>` layers with
    layer_norm1/2, mha.qkv_proj/out_proj, linear1/2; the patch embedding's second conv at index 3), and the single
    compression head is `compress`."""
    key = key.replace("network.denoiser.", "network.").replace("network.head.", "network.")
    key = key.replace("network.encoder.compress.0.", "network.compress.")
    key = _residual_block(key, layernorm=False)  # the residual MLP's blocks: l1, l2
    if key.startswith("network.encoder.trunk."):
        key = key.replace("network.encoder.trunk.", "network.backbone.vit.")
        key = re.sub(r"\.layers\.(\d+)\.", r".net.\1.", key)
        for ours, theirs in (
            (".norm1.", ".layer_norm1."),
            (".norm2.", ".layer_norm2."),
            (".attn.qkv.", ".mha.qkv_proj."),
            (".attn.out.", ".mha.out_proj."),
            (".mlp.0.", ".linear1."),
            (".mlp.2.", ".linear2."),
            ("patch_embed.proj.0.", "patch_embed.embed.0."),
            ("patch_embed.proj.2.", "patch_embed.embed.3."),
        ):
            key = key.replace(ours, theirs)
    return key


def test_dppo_vit_pretrain_checkpoint_evaluates(tmp_path: Path) -> None:
    cfg, policy = build(("robomimic/eval/can", "eval_diffusion_mlp_img"))
    names = set(dppo_key_map(policy).values())
    for name in (
        "network.backbone.vit.pos_embed",
        "network.backbone.vit.patch_embed.embed.3.weight",
        "network.backbone.vit.net.0.mha.qkv_proj.weight",
        "network.backbone.vit.net.0.linear2.bias",
        "network.compress.input_proj.0.weight",
        "network.time_embedding.1.weight",
    ):
        assert name in names, name
    ema = dppo_state(policy.state_dict(), vit_rule, seed=6)
    path = tmp_path / "state_1000.pt"
    torch.save({"epoch": 1000, "model": ema, "ema": ema}, path)
    assert load_policy_weights(policy, load_checkpoint(path), cfg, path, for_eval=True) == "pretrain"
    assert_landed(policy, ema, vit_rule, "network", "network")


def test_dppo_pixel_gaussian_and_pixel_critic_translate(tmp_path: Path) -> None:
    """DPPO's Gaussian_VisionMLP and ViTCritic: the same ViT names, the head's tensors on the network itself."""
    cfg, policy = build(("robomimic/finetune/can", "ft_ppo_gaussian_mlp_img"))
    ema = dppo_state(policy.state_dict(), vit_rule, seed=7)
    assert "network.mlp_mean.layers.1.l1.weight" in ema and "network.backbone.vit.net.0.linear1.weight" in ema
    path = tmp_path / "state_1000.pt"
    torch.save({"epoch": 1000, "model": ema, "ema": ema}, path)
    assert load_policy_weights(policy, load_checkpoint(path), cfg, path) == "pretrain"
    assert_landed(policy, ema, vit_rule, "network", "network")

    critic = instantiate(cfg.model.critic, "model.critic")
    critic_rule = lambda key: vit_rule(f"network.{key}")[len("network.") :].replace("mlp.", "Q1.", 1)  # noqa: E731
    dppo = dppo_state(critic.state_dict(), critic_rule, seed=8, prefix="")
    assert "Q1.layers.1.l2.weight" in dppo and "compress.weight" in dppo
    critic.load_state_dict(
        dppo_critic_state_dict(critic, {"itr": 1, "model": {f"critic.{k}": v for k, v in dppo.items()}}, path)
    )
    for key, value in critic.state_dict().items():
        assert torch.equal(value, dppo[critic_rule(key)]), key


def test_dppo_gaussian_pretrain_checkpoint(tmp_path: Path) -> None:
    cfg, policy = build((AVOID_FT, "ft_ppo_gaussian_mlp"))  # residual, learned fixed std
    ema = dppo_state(policy.state_dict(), gaussian_rule, seed=2)
    ema |= {"network.logvar_min": torch.tensor(-9.2), "network.logvar_max": torch.tensor(0.0)}  # std_max 1 (D7)
    assert "network.mlp_mean.layers.1.l1.weight" in ema and "network.logvar" in ema
    assert load_policy_weights(policy, {"epoch": 1, "model": ema, "ema": ema}, cfg, tmp_path / "s.pt") == "pretrain"
    assert_landed(policy, ema, gaussian_rule, "network", "network")
    assert policy.network.logvar_max == pytest.approx(2 * torch.log(torch.tensor(0.2)).item())  # the config's

    overrides = ["model.network.fixed_std=null", "model.network.learn_fixed_std=false"]
    cfg, policy = build((AVOID_FT, "ft_ppo_gaussian_mlp"), [*overrides, "model.network.residual_style=false"])
    ema = dppo_state(policy.state_dict(), gaussian_rule, seed=3)
    load_policy_weights(policy, {"epoch": 1, "model": ema, "ema": ema}, cfg, tmp_path / "s.pt")
    assert_landed(policy, ema, gaussian_rule, "network", "network")


def test_dppo_gmm_pretrain_checkpoint(tmp_path: Path) -> None:
    cfg, policy = build((AVOID_FT, "ft_ppo_gmm_mlp"))
    ema = dppo_state(policy.state_dict(), gmm_rule, seed=4)
    assert ema["network.logvar"].dim() == 1 and "network.mlp_weights.layers.1.l2.bias" in ema
    load_policy_weights(policy, {"epoch": 1, "model": ema, "ema": ema}, cfg, tmp_path / "s.pt")
    assert_landed(policy, ema, gmm_rule, "network", "network")


# ---------------------------------------------------------------- fine-tuning checkpoints
def dppo_finetune_diffusion(policy: nn.Module, rename: Callable[[str], str]) -> dict:
    base = dppo_state(policy.state_dict(), rename, seed=5)
    tuned = {k.replace("network.", "actor_ft.", 1): v for k, v in dppo_state(policy.state_dict(), rename, 6).items()}
    actor = {k.replace("network.", "actor.", 1): v for k, v in base.items()}  # the same module, registered twice
    critic = dppo_state(CriticObs(11, [8, 8, 8], residual_style=True).state_dict(), _residual_block_plain, 7, "")
    critic = {f"critic.{k}": v for k, v in critic.items()}
    return {"itr": 100, "model": {**base, **actor, **tuned, **critic}}


def _residual_block_plain(key: str) -> str:
    return _residual_block(key, layernorm=False).replace("mlp.", "Q1.", 1)


def test_dppo_finetune_checkpoint_warm_starts_the_critics(tmp_path: Path) -> None:
    """Fine-tuning from a DPPO fine-tuning checkpoint also takes its critic (and the target copy) when it fits; a
    critic of another shape keeps its initial weights."""
    import copy

    from agent.finetune.loading import warm_start_critics

    _, ft_policy = build(HOPPER_FT, [SMALL])
    ckpt = dppo_finetune_diffusion(ft_policy, diffusion_rule())
    critic = CriticObs(11, [8, 8, 8], residual_style=True)
    modules = {"critic": critic, "critic_target": copy.deepcopy(critic)}
    assert warm_start_critics(modules, ckpt, tmp_path / "state_100.pt") == ["critic"]
    for key, value in critic.state_dict().items():
        torch.testing.assert_close(value, ckpt["model"][f"critic.{_residual_block_plain(key)}"])
    torch.testing.assert_close(modules["critic_target"].state_dict(), critic.state_dict())
    other = CriticObs(11, [16, 16, 16], residual_style=True)
    before = copy.deepcopy(other.state_dict())
    assert warm_start_critics({"critic": other}, ckpt, tmp_path / "state_100.pt") == []
    torch.testing.assert_close(other.state_dict(), before)


@pytest.mark.parametrize("hint", ["hydra", "folder", "none"])
def test_dppo_diffusion_finetune_checkpoint_for_eval(hint: str, tmp_path: Path) -> None:
    rename = diffusion_rule()
    _, ft_policy = build(HOPPER_FT, [SMALL])
    ckpt = dppo_finetune_diffusion(ft_policy, rename)
    run = tmp_path / ("hopper-medium-v2_ppo_diffusion_mlp_ta4_td20_tdf10" if hint == "folder" else "exp") / "run_42"
    path = run / "checkpoint" / "state_100.pt"
    path.parent.mkdir(parents=True)
    torch.save(ckpt, path)
    if hint == "hydra":
        (run / ".hydra").mkdir()
        (run / ".hydra" / "config.yaml").write_text("ft_denoising_steps: 10\nlogdir: ${now:%H}\n")

    cfg, policy = build(HOPPER_EVAL, [SMALL, "ft_denoising_steps=10"])
    assert load_policy_weights(policy, load_checkpoint(path), cfg, path, for_eval=True) == "finetune"
    assert_landed(policy, ckpt["model"], rename, "network", "network")
    assert_landed(policy, ckpt["model"], rename, "actor_ft", "actor_ft")

    cfg, policy = build(HOPPER_EVAL, [SMALL, "ft_denoising_steps=0"])
    expected = "cannot be determined" if hint == "none" else "ft_denoising_steps=10 but this config has"
    with pytest.raises(ConfigError, match=expected) as err:
        load_policy_weights(policy, load_checkpoint(path), cfg, path, for_eval=True)
    assert "\n" not in str(err.value) and "set ft_denoising_steps=" in str(err.value)


def test_dppo_gaussian_finetune_checkpoint_for_eval(tmp_path: Path) -> None:
    cfg, policy = build((AVOID_FT, "ft_ppo_gaussian_mlp"))
    tuned = dppo_state(policy.state_dict(), gaussian_rule, seed=8)  # network = actor_ft: the trained module
    frozen = dppo_state(policy.state_dict(), gaussian_rule, seed=9)
    model = {
        **tuned,
        **{k.replace("network.", "actor_ft.", 1): v for k, v in tuned.items()},
        **{k.replace("network.", "actor.", 1): v for k, v in frozen.items()},
        "critic.Q1.layers.0.weight": torch.zeros(3, 4),
    }
    assert load_policy_weights(policy, {"itr": 5, "model": model}, cfg, tmp_path / "s.pt", for_eval=True) == "finetune"
    assert_landed(policy, tuned, gaussian_rule, "network", "network")


# ---------------------------------------------------------------- critics
_LN_LAYERS = {"0": "0.linear_1", "1": "0.norm_1", "3": "1.linear_1", "4": "1.norm_1", "6": "2.linear_1"}


def _plain_layernorm(key: str) -> str:
    """A plain MLP with LayerNorm: Linear, LayerNorm, activation per hidden layer."""
    return re.sub(r"layers\.(\d)\.", lambda m: f"moduleList.{_LN_LAYERS[m.group(1)]}.", key)


CRITICS = {
    "CriticObs_residual": (lambda: CriticObs(6, [16, 16, 16], residual_style=True), _residual_block_plain),
    "CriticObsAct_layernorm": (lambda: CriticObsAct(6, [16, 16], 2, use_layernorm=True), _plain_layernorm),
}


@pytest.mark.parametrize("kind", sorted(CRITICS))
def test_dppo_critic_weights(kind: str) -> None:
    make, rename = CRITICS[kind]
    dppo = dppo_state(make().state_dict(), rename, seed=10, prefix="")
    critic = make()
    critic.load_state_dict(
        dppo_critic_state_dict(critic, {"itr": 1, "model": {f"critic.{k}": v for k, v in dppo.items()}}, Path("s.pt"))
    )
    for key, value in critic.state_dict().items():
        assert torch.equal(value, dppo[rename(key)]), key


# ---------------------------------------------------------------- keys that cannot be mapped
def test_unmappable_keys_are_one_line_config_errors(tmp_path: Path) -> None:
    cfg, policy = build(HOPPER_FT, [SMALL])
    ema = dppo_state(policy.state_dict(), diffusion_rule(), seed=11)
    ema["network.unet.mid_modules.0.blocks.0.weight"] = torch.zeros(2)
    with pytest.raises(ConfigError) as err:
        load_policy_weights(policy, {"epoch": 1, "model": ema, "ema": ema}, cfg, tmp_path / "s.pt")
    msg = str(err.value)
    assert "\n" not in msg and "network.unet.mid_modules.0.blocks.0.weight" in msg and "DPPO checkpoint" in msg

    wrong_layout = diffusion_rule(residual=False)  # a plain-MLP checkpoint for a residual policy
    ema = dppo_state(policy.state_dict(), wrong_layout, seed=12)
    with pytest.raises(ConfigError, match=r"network\.mlp_mean\.moduleList\.0\.linear_1\.weight"):
        load_policy_weights(policy, {"epoch": 1, "model": ema, "ema": ema}, cfg, tmp_path / "s.pt")

    ckpt = dppo_finetune_diffusion(policy, diffusion_rule())
    ckpt["model"]["value_net.weight"] = torch.zeros(1)
    with pytest.raises(ConfigError, match="value_net.weight"):
        load_policy_weights(policy, ckpt, cfg, tmp_path / "x_tdf10" / "checkpoint" / "state_1.pt")
