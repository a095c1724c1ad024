"""Pixel encoders, augmentations, the vision wrappers, and encode-once sampling (small images, CPU)."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf, open_dict

from agent.config import CFG_ROOT, compose, instantiate
from model.common.critic import CriticObs, CriticObsAct
from model.common.vision import VisionNetwork
from model.diffusion.diffusion import DiffusionModel
from model.diffusion.mlp_diffusion import DiffusionMLP
from model.diffusion.unet import Unet1D
from model.diffusion.vision import ENCODED_KEY, VisionDenoiser
from model.encoder import (
    RandomCrop,
    RandomShift,
    ResNetEncoder,
    SpatialEmb,
    SpatialSoftmax,
    ViTEncoder,
    build_head,
    random_shift,
)
from model.gaussian.mlp import GaussianMLP
from model.gaussian.model import GaussianModel


def rgb_batch(b: int, t: int, c: int, h: int, w: int | None = None, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, t, c, h, w or h), generator=g, dtype=torch.uint8)


def small_vit(**kw) -> ViTEncoder:
    args = dict(image_size=24, num_img=1, img_cond_steps=1, state_dim=4, embed_dim=32, num_heads=2, spatial_emb=16)
    args.update(kw)
    return ViTEncoder(**args)


def small_resnet(**kw) -> ResNetEncoder:
    args = dict(image_size=64, num_img=1, img_cond_steps=1, num_kp=8, visual_feature_dim=16, base_width=8)
    args.update(kw)
    return ResNetEncoder(**args)


# ------------------------------------------------------------------------------------------------------------
# encoders: shapes, gradients, layout


@pytest.mark.parametrize("spatial_emb", [16, 0])
def test_vit_encoder_shape_and_patches(spatial_emb):
    enc = small_vit(image_size=32, num_img=2, img_cond_steps=2, spatial_emb=spatial_emb, visual_feature_dim=24)
    # 32 -> conv 8/4 -> 7 -> conv 3/2 -> 3: 9 patches
    assert enc.trunk.num_patches == 9
    out = enc(rgb_batch(5, 3, 6, 32), torch.randn(5, 2, 2))
    per_camera = spatial_emb or 24
    assert enc.feature_dim == 2 * per_camera
    assert out.shape == (5, 2 * per_camera) and torch.isfinite(out).all()


def test_vit_reference_geometry_96px():
    enc = ViTEncoder(image_size=96, state_dim=9)
    assert enc.trunk.patch_embed.grid == (11, 11) and enc.trunk.num_patches == 121
    assert enc.feature_dim == 128


@pytest.mark.parametrize("share_trunk", [False, True])
def test_resnet_encoder_shape(share_trunk):
    enc = small_resnet(num_img=2, img_cond_steps=2, share_trunk=share_trunk)
    assert len(enc.trunks) == (1 if share_trunk else 2)
    out = enc(rgb_batch(3, 2, 6, 64), torch.zeros(3, 1, 4))
    assert enc.feature_dim == 32 and out.shape == (3, 32) and torch.isfinite(out).all()
    # 64 px -> 1/32 -> 2x2 keypoint maps
    assert enc.heads[0][0].pos.shape == (4, 2)


def test_resnet18_structure_and_groupnorm():
    enc = ResNetEncoder(image_size=96)
    trunk = enc.trunks[0]
    convs = [m for m in trunk.modules() if isinstance(m, torch.nn.Conv2d)]
    # ResNet-18: stem + 8 blocks x 2 convs + 3 downsampling shortcuts = 20 convolutions
    assert len(convs) == 20 and trunk.out_channels == 512
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in enc.modules())
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in trunk.modules()) == 20
    assert trunk.output_size(96, 96) == (3, 3)


def test_resnet_rejects_one_pixel_feature_map():
    with pytest.raises(ValueError, match="constant keypoints"):
        small_resnet(image_size=32)


@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_gradients_reach_first_layer(kind):
    torch.manual_seed(0)
    enc = small_vit(num_img=2) if kind == "vit" else small_resnet(num_img=2)
    size = enc.image_size[0]
    out = enc(rgb_batch(4, 1, 6, size), torch.randn(4, 1, 4))
    (out * torch.randn_like(out)).sum().backward()
    first = enc.trunk.patch_embed.proj[0] if kind == "vit" else enc.trunks[0].net[0]
    assert first.weight.grad is not None
    assert first.weight.grad.abs().sum() > 0 and torch.isfinite(first.weight.grad).all()
    if kind == "resnet":  # the second camera's own trunk is trained too
        assert enc.trunks[1].net[0].weight.grad.abs().sum() > 0


def test_cameras_are_encoded_separately():
    """Changing camera 0's pixels changes only camera 0's feature block (shared ViT, one compressor per camera)."""
    torch.manual_seed(0)
    enc = small_vit(num_img=2, state_dim=0).eval()
    rgb = rgb_batch(2, 1, 6, 24)
    other = rgb.clone()
    other[:, :, :3] = 255 - other[:, :, :3]
    a, b = enc(rgb, torch.zeros(2, 1, 4)), enc(other, torch.zeros(2, 1, 4))
    assert not torch.allclose(a[:, :16], b[:, :16])
    torch.testing.assert_close(a[:, 16:], b[:, 16:])
    assert enc.compress[0] is not enc.compress[1]


def test_preprocess_normalises_and_stacks_history_per_camera():
    enc = small_vit(num_img=2, img_cond_steps=2)
    b, t = 2, 3
    rgb = torch.zeros(b, t, 6, 24, 24, dtype=torch.uint8)
    for step in range(t):
        for cam in range(2):
            rgb[:, step, 3 * cam : 3 * cam + 3] = 10 * step + cam  # frame value encodes (step, camera)
    x = enc.preprocess(rgb)
    assert x.shape == (b * 2, 6, 24, 24) and x.dtype == torch.float32
    values = ((x[:, :, 0, 0] + 0.5) * 255).round()
    # row b*2 + cam holds [frame t-2 (3 ch), frame t-1 (3 ch)] of that camera, oldest first
    expected = torch.tensor([[10.0] * 3 + [20.0] * 3, [11.0] * 3 + [21.0] * 3]).repeat(b, 1)
    torch.testing.assert_close(values, expected)
    assert float(enc.preprocess(torch.full((1, 2, 6, 24, 24), 255, dtype=torch.uint8)).max()) == pytest.approx(0.5)


def test_uint8_and_float_inputs_agree():
    enc = small_vit().eval()
    rgb = rgb_batch(3, 1, 3, 24)
    state = torch.randn(3, 1, 4)
    torch.testing.assert_close(enc(rgb, state), enc(rgb.float(), state))


def test_wrong_shapes_fail_clearly():
    enc = small_vit(num_img=2)
    with pytest.raises(ValueError, match="C=6"):
        enc(rgb_batch(1, 1, 3, 24), torch.zeros(1, 1, 4))
    with pytest.raises(ValueError, match="state_dim=4"):
        enc(rgb_batch(1, 1, 6, 24), torch.zeros(1, 1, 5))
    with pytest.raises(ValueError, match="img_cond_steps"):
        small_vit(img_cond_steps=2)(rgb_batch(1, 1, 3, 24), torch.zeros(1, 1, 4))


def test_spatial_emb_matches_formula():
    torch.manual_seed(0)
    emb = SpatialEmb(num_patch=5, patch_dim=4, prop_dim=3, proj_dim=6)
    feat, prop = torch.randn(2, 5, 4), torch.randn(2, 3)
    lin, ln = emb.input_proj[0], emb.input_proj[1]
    rows = torch.cat((feat.transpose(1, 2), prop[:, None, :].expand(2, 4, 3)), dim=-1)  # (B, D, P + S)
    y = F.relu(F.layer_norm(rows @ lin.weight.T + lin.bias, (6,), ln.weight, ln.bias))
    expected = torch.einsum("bde,de->be", y, emb.weight[0])
    torch.testing.assert_close(emb(feat, prop), expected)


def test_spatial_softmax_finds_the_hot_pixel():
    ss = SpatialSoftmax(in_channels=1, height=3, width=5, num_kp=1)
    with torch.no_grad():
        ss.keypoints.weight.fill_(1.0)
        ss.keypoints.bias.zero_()
    x = torch.zeros(2, 1, 3, 5)
    x[0, 0, 2, 4] = 60.0  # bottom-right -> (x, y) = (1, 1)
    x[1, 0, 1, 0] = 60.0  # middle-left -> (-1, 0)
    torch.testing.assert_close(ss(x), torch.tensor([[1.0, 1.0], [-1.0, 0.0]]), atol=1e-4, rtol=0)
    flat = SpatialSoftmax(in_channels=1, height=3, width=5, num_kp=1)
    with torch.no_grad():
        flat.keypoints.weight.zero_()
        flat.keypoints.bias.zero_()
    torch.testing.assert_close(flat(x), torch.zeros(2, 2), atol=1e-6, rtol=0)  # uniform map -> the centre


# ------------------------------------------------------------------------------------------------------------
# augmentation


def test_random_shift_is_a_replicate_padded_integer_shift():
    torch.manual_seed(0)
    pad = 2
    images = torch.rand(16, 2, 6, 7)
    out = random_shift(images, pad)
    padded = F.pad(images, (pad,) * 4, mode="replicate")
    for i in range(len(images)):
        matches = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if torch.equal(out[i], padded[i, :, dy : dy + 6, dx : dx + 7])
        ]
        assert matches, f"image {i} is not an integer shift of the padded input"
    assert not torch.equal(out, images)


def test_random_shift_only_in_training_mode():
    torch.manual_seed(0)
    aug = RandomShift(4)
    images = torch.rand(8, 3, 24, 24)
    assert aug.training
    shifted = aug(images)
    assert shifted.shape == images.shape and not torch.equal(shifted, images)
    aug.eval()
    assert torch.equal(aug(images), images)


def test_random_crop_random_in_train_centre_in_eval():
    torch.manual_seed(0)
    aug = RandomCrop(20)
    images = torch.rand(8, 3, 24, 24)
    a, b = aug(images), aug(images)
    assert a.shape == (8, 3, 20, 20) and not torch.equal(a, b)
    aug.eval()
    torch.testing.assert_close(aug(images), images[:, :, 2:22, 2:22])
    with pytest.raises(ValueError, match="larger than the image"):
        aug(torch.rand(1, 3, 16, 16))


@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_encoder_augments_in_train_mode_only(kind):
    torch.manual_seed(0)
    if kind == "vit":
        enc = small_vit(augment=RandomShift(4))
    else:
        enc = small_resnet(augment=RandomCrop(56))
    size = enc.image_size[0]
    rgb, state = rgb_batch(4, 1, 3, size), torch.randn(4, 1, 4)
    assert not torch.allclose(enc(rgb, state), enc(rgb, state))
    enc.eval()
    torch.testing.assert_close(enc(rgb, state), enc(rgb, state))


# ------------------------------------------------------------------------------------------------------------
# vision wrappers


def test_vision_network_with_gaussian_and_critics():
    torch.manual_seed(0)
    cond = {"rgb": rgb_batch(3, 1, 3, 24), "state": torch.randn(3, 1, 4)}
    net = VisionNetwork(small_vit(), functools.partial(GaussianMLP, action_dim=2, horizon_steps=4, fixed_std=0.1), 4)
    assert net.head.cond_dim == 16 + 4
    policy = GaussianModel(net, horizon_steps=4, action_dim=2)
    assert policy.sample(cond).actions.shape == (3, 4, 2)
    v = VisionNetwork(small_vit(), functools.partial(CriticObs, mlp_dims=[32, 32]), 4)
    assert v(cond).shape == (3,)
    q = VisionNetwork(small_vit(), functools.partial(CriticObsAct, mlp_dims=[32], action_dim=2, action_steps=4), 4)
    q1, q2 = q(cond, torch.randn(3, 4, 2))
    assert q1.shape == q2.shape == (3,)


def test_build_head_rejects_a_preset_cond_dim():
    with pytest.raises(ValueError, match="do not set cond_dim"):
        build_head(functools.partial(CriticObs, cond_dim=3, mlp_dims=[8]), 20, "VisionNetwork")
    with pytest.raises(ValueError, match="cond_dim=3"):
        build_head(CriticObs(3, [8]), 20, "VisionNetwork")


def test_vision_denoiser_encoded_cond_matches_raw_cond():
    torch.manual_seed(0)
    net = VisionDenoiser(
        small_vit(), functools.partial(Unet1D, action_dim=2, dim=8, dim_mults=(1, 2), horizon_steps=4), 4
    ).eval()
    cond = {"rgb": rgb_batch(3, 1, 3, 24), "state": torch.randn(3, 1, 4)}
    x, t = torch.randn(3, 4, 2), torch.tensor([0, 5, 9])
    encoded = net.encode_cond(cond)
    assert set(encoded) == {ENCODED_KEY} and encoded[ENCODED_KEY].shape == (3, 16 + 4)
    torch.testing.assert_close(net(x, t, encoded), net(x, t, cond))
    assert net(x, t, cond).shape == (3, 4, 2)


def _counting_policy(ft_denoising_steps: int) -> tuple[DiffusionModel, dict[str, list[int]]]:
    torch.manual_seed(0)
    denoiser = functools.partial(DiffusionMLP, action_dim=2, horizon_steps=4, mlp_dims=(32, 32))
    model = DiffusionModel(
        VisionDenoiser(small_vit(), denoiser, 4),
        horizon_steps=4,
        obs_dim=4,
        action_dim=2,
        denoising_steps=10,
        ft_denoising_steps=ft_denoising_steps,
    )
    calls: dict[str, list[int]] = {"network": [], "actor_ft": []}
    for name in calls:
        net = getattr(model, name)
        if net is not None:
            net.encoder.register_forward_hook(lambda mod, args, out, name=name: calls[name].append(args[0].shape[0]))
    return model, calls


def test_encoder_runs_once_per_sample_call():
    model, calls = _counting_policy(ft_denoising_steps=0)
    cond = {"rgb": rgb_batch(5, 1, 3, 24), "state": torch.randn(5, 1, 4)}
    with torch.no_grad():
        model.sample(cond)
    assert calls["network"] == [5]  # K = 10 denoising steps, one encoder pass


def test_encoder_runs_once_per_net_when_fine_tuning():
    model, calls = _counting_policy(ft_denoising_steps=4)
    cond = {"rgb": rgb_batch(5, 1, 3, 24), "state": torch.randn(5, 1, 4)}
    with torch.no_grad():
        sample = model.sample(cond, return_chain=True)
    # frozen base for 6 steps, fine-tuned copy for 4 steps: each encoder once
    assert calls == {"network": [5], "actor_ft": [5]}
    calls["actor_ft"].clear()
    logp = model.chain_log_prob(cond, sample.chain)
    assert logp.shape == (5, 4, 4, 2)
    assert calls["actor_ft"] == [5]  # encoded on B rows, then repeated over the K' transitions
    # the repeated encoding scores exactly like per-row encoding
    step = torch.tensor([0, 1, 2, 3, 3])
    torch.testing.assert_close(model.chain_log_prob(cond, sample.chain, step), logp[torch.arange(5), step])


def test_pixel_diffusion_policy_overfits_tiny_image_dataset():
    """Two image classes with the same state must map to two different action chunks."""
    torch.manual_seed(0)
    n, size = 16, 24
    label = torch.arange(n) % 2
    images = torch.randint(0, 40, (n, 1, 3, size, size), dtype=torch.uint8)
    images[label == 0, ..., : size // 2] += 200  # bright left half vs bright right half
    images[label == 1, ..., size // 2 :] += 200
    targets = torch.tensor([[0.6, -0.4], [-0.5, 0.5]])[label].unsqueeze(1).expand(n, 2, 2).contiguous()
    cond = {"rgb": images, "state": torch.zeros(n, 1, 2)}
    encoder = ViTEncoder(size, state_dim=2, embed_dim=32, num_heads=2, spatial_emb=32, augment=RandomShift(2))
    denoiser = functools.partial(DiffusionMLP, action_dim=2, horizon_steps=2, time_dim=16, mlp_dims=(128, 128))
    model = DiffusionModel(VisionDenoiser(encoder, denoiser, 2), 2, 2, 2, denoising_steps=5)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(200):
        loss = model.loss(targets, cond)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.2 * first, (first, last)
    model.eval()
    with torch.no_grad():
        actions = model.sample(cond, deterministic=True).actions
    for cls in (0, 1):
        err = (actions[label == cls].mean(0) - targets[label == cls][0]).abs().max()
        assert err < 0.15, f"class {cls}: mean action off by {float(err):.3f}"


@pytest.mark.parametrize("piece", ["encoder_vit_img", "encoder_resnet_img"])
def test_encoder_config_pieces_build_a_pixel_policy(piece):
    """Both encoder pieces slot into a pixel policy config (the ResNet one replacing the default ViT)."""
    cfg = compose(
        CFG_ROOT / "robomimic/pretrain/can",
        "pre_diffusion_mlp_img",
        ["wandb=null", "shape_meta.obs.rgb.shape=[3,40,40]"],
    )
    with open_dict(cfg):
        cfg.model.network.encoder = OmegaConf.load(CFG_ROOT / "common" / "policy" / f"{piece}.yaml")
    model = instantiate(cfg.model, "model")
    encoder = model.network.encoder
    assert isinstance(encoder, ViTEncoder if piece == "encoder_vit_img" else ResNetEncoder)
    assert encoder.image_size == (40, 40) and encoder.num_img == 1
    assert isinstance(encoder.augment, RandomShift if piece == "encoder_vit_img" else RandomCrop)
    cond = {"rgb": rgb_batch(2, 1, 3, 40), "state": torch.randn(2, 1, cfg.obs_dim)}
    loss = model.loss(torch.zeros(2, cfg.horizon_steps, cfg.action_dim), cond)
    loss.backward()
    assert torch.isfinite(loss)


# ------------------------------------------------------------------ `encoder=` / `critic_encoder=` config choices
PIXEL_CONFIGS = [
    ("robomimic/pretrain/can", "pre_diffusion_mlp_img"),
    ("robomimic/finetune/can", "ft_ppo_diffusion_mlp_img"),
]
SMALL_IMAGES = "shape_meta.obs.rgb.shape=[3,40,40]"  # ResNet-18 needs >= 33 px after its 87.5% crop


def build_pixel_policy(folder: str, name: str, overrides: list[str]):
    """Compose a pixel config and build its policy as pretraining / fine-tuning do."""
    from hydra.utils import get_class

    from agent.finetune.loading import build_policy

    cfg = compose(CFG_ROOT / folder, name, ["wandb=null", "device=cpu", SMALL_IMAGES, *overrides])
    algorithm = getattr(get_class(cfg._target_), "algorithm_class", None)
    return cfg, build_policy(cfg, getattr(algorithm, "model_keys", ()))


@pytest.mark.parametrize("choice", ["resnet", None], ids=["encoder=resnet", "default"])
@pytest.mark.parametrize("where", PIXEL_CONFIGS, ids=lambda w: w[1])
def test_encoder_choice_replaces_the_policy_encoder(where, choice):
    """`encoder=resnet` swaps the whole model.network.encoder node (no ViT keys left); the default stays DPPO's ViT.
    The PPO critic keeps its own choice (`critic_encoder=`, ViT by default)."""
    cfg, policy = build_pixel_policy(*where, [f"encoder={choice}"] if choice else [])
    node = cfg.model.network.encoder
    if choice == "resnet":
        assert node._target_ == "model.encoder.resnet.ResNetEncoder" and "state_dim" not in node
        assert isinstance(policy.network.encoder, ResNetEncoder)
        assert isinstance(policy.network.encoder.augment, RandomCrop)
    else:
        assert node._target_ == "model.encoder.vit.ViTEncoder"
        assert isinstance(policy.network.encoder, ViTEncoder)
        assert isinstance(policy.network.encoder.augment, RandomShift)
    b = 2
    cond = {"rgb": rgb_batch(b, cfg.img_cond_steps, 3, 40), "state": torch.randn(b, cfg.cond_steps, cfg.obs_dim)}
    x = torch.randn(b, cfg.horizon_steps, cfg.action_dim)
    with torch.no_grad():
        out = policy.network(x, torch.zeros(b, dtype=torch.long), cond)
    assert out.shape == (b, cfg.horizon_steps, cfg.action_dim) and torch.isfinite(out).all()
    if "critic" in cfg.model:
        assert cfg.model.critic.encoder._target_ == "model.encoder.vit.ViTEncoder"


@pytest.mark.parametrize("choice", ["resnet", "vit"])
def test_critic_encoder_choice(choice):
    cfg = compose(
        CFG_ROOT / PIXEL_CONFIGS[1][0], PIXEL_CONFIGS[1][1], ["wandb=null", SMALL_IMAGES, f"critic_encoder={choice}"]
    )
    assert cfg.model.network.encoder._target_ == "model.encoder.vit.ViTEncoder"  # the policy's choice is apart
    critic = instantiate(cfg.model.critic, "model.critic")
    assert isinstance(critic.encoder, ResNetEncoder if choice == "resnet" else ViTEncoder)
    assert critic.encoder.augment is None  # the stored images are shifted instead (train.augment)
    cond = {"rgb": rgb_batch(3, cfg.img_cond_steps, 3, 40), "state": torch.randn(3, cfg.cond_steps, cfg.obs_dim)}
    with torch.no_grad():
        assert critic(cond).reshape(-1).shape == (3,)


def test_encoder_choice_on_the_command_line_is_checked():
    """script/run.py's preflight accepts `encoder=resnet`, names the choices for a typo and says when a config has
    no such choice; script/sweep.py hands the choice to Hydra as a one-value sweep (`++` is refused for groups)."""
    from agent.config import check_overrides
    from agent.errors import ConfigError
    from script.sweep import prepare_overrides

    folder, name = CFG_ROOT / PIXEL_CONFIGS[1][0], PIXEL_CONFIGS[1][1]
    check_overrides(folder, name, ["encoder=resnet", "critic_encoder=resnet", "seed=1"])
    with pytest.raises(ConfigError, match=r"encoder=resnt is not a choice; encoder= takes one of resnet, vit"):
        check_overrides(folder, name, ["encoder=resnt"])
    with pytest.raises(ConfigError, match="pre_diffusion_mlp has no `encoder` choice"):
        check_overrides(CFG_ROOT / "robomimic/pretrain/can", "pre_diffusion_mlp", ["encoder=resnet"])
    with pytest.raises(ConfigError, match="model.network.mlp_dim is not a key"):  # a real bad key is still named
        check_overrides(folder, name, ["encoder=resnet", "model.network.mlp_dim=3"])
    out = prepare_overrides(str(folder), [name], ["encoder=resnet", "seed=0,1", "train.n_train_itr=2"])
    assert out == ["encoder=choice(resnet)", "seed=0,1", "++train.n_train_itr=2"]


def test_fine_tuning_a_resnet_checkpoint_names_the_encoder_choice(tmp_path):
    from agent.errors import ConfigError
    from agent.finetune.loading import check_compatible

    (pre_dir, pre_name), (ft_dir, ft_name) = PIXEL_CONFIGS
    pre = compose(CFG_ROOT / pre_dir, pre_name, ["wandb=null", "encoder=resnet"])
    ckpt = {"config": OmegaConf.to_container(pre, resolve=True)}
    ft = compose(CFG_ROOT / ft_dir, ft_name, ["wandb=null"])
    with pytest.raises(
        ConfigError, match=r"trained with encoder=resnet .* this config has encoder=vit; add encoder=resnet"
    ):
        check_compatible(ckpt, ft, tmp_path / "state_1.pt", uses_diffusion=True)
    check_compatible(ckpt, compose(CFG_ROOT / ft_dir, ft_name, ["wandb=null", "encoder=resnet"]), tmp_path, True)
