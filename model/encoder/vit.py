"""Small ViT image encoder with SpatialEmb compression (the IBRL-style encoder DPPO uses).

Trunk: convolutional patch embedding -> learned positional embedding -> ``depth`` pre-LayerNorm transformer layers
-> final LayerNorm, giving ``(N, P, D)`` patch features. Each camera then has its own compressor: SpatialEmb (the
patch features and the proprioceptive state mixed by a per-channel projection) or a flat Linear compression.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.encoder.base import ImageEncoder, conv_out

INIT_STD = 0.02


def _init_vit_weights(module: nn.Module) -> None:
    """Linear layers: truncated normal (std 0.02) with zero bias, as in the reference ViT."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class PatchEmbed(nn.Module):
    """Convolutional patch embedding.

    ``Conv2d(C, D, patch_size, patch_stride)`` -> [GroupNorm] -> ReLU, then (``second_conv``)
    ``Conv2d(D, D, 3, stride 2)``. For 96x96 with the defaults (8, 4) this gives 23x23 and then 11x11 = 121 patches.

    Args:
        in_channels: input channels (``3 * img_cond_steps``).
        image_size: input size ``(H, W)``.
        embed_dim: D.
        patch_size: kernel of the first convolution.
        patch_stride: stride of the first convolution.
        second_conv: add the 3x3 stride-2 convolution (the reference's "embed2" style).
        embed_norm: GroupNorm with one group per channel after the first convolution.

    Shapes:
        ``(N, C, H, W) -> (N, P, D)`` with ``P = num_patches``.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: tuple[int, int],
        embed_dim: int = 128,
        patch_size: int = 8,
        patch_stride: int = 4,
        second_conv: bool = True,
        embed_norm: bool = False,
    ) -> None:
        super().__init__()
        h, w = (conv_out(s, patch_size, patch_stride) for s in image_size)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_stride)]
        if embed_norm:
            layers.append(nn.GroupNorm(embed_dim, embed_dim))
        layers.append(nn.ReLU())
        if second_conv:
            layers.append(nn.Conv2d(embed_dim, embed_dim, 3, stride=2))
            h, w = conv_out(h, 3, 2), conv_out(w, 3, 2)
        if h < 1 or w < 1:
            raise ValueError(
                f"image {image_size} is too small for patch_size={patch_size}, patch_stride={patch_stride}"
                f"{' and the second conv' if second_conv else ''}"
            )
        self.grid = (h, w)
        self.num_patches = h * w
        self.proj = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Args: x ``(N, C, H, W)``. Returns ``(N, P, D)``."""
        return self.proj(x).flatten(2).transpose(1, 2)


class SelfAttention(nn.Module):
    """Multi-head self-attention with fused QKV projection and ``scaled_dot_product_attention``.

    Shapes: ``(N, P, D) -> (N, P, D)``.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim)
        self.out = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        """Args: x ``(N, P, D)``. Returns ``(N, P, D)``."""
        n, p, d = x.shape
        q, k, v = self.qkv(x).view(n, p, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(n, p, d))


class TransformerLayer(nn.Module):
    """Pre-LayerNorm transformer layer: ``x + Drop(Attn(LN(x)))``, then ``x + Drop(MLP(LN(x)))`` (GELU MLP)."""

    def __init__(self, embed_dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = int(embed_dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.attn = SelfAttention(embed_dim, num_heads, dropout)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.mlp = nn.Sequential(nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, embed_dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """Args: x ``(N, P, D)``. Returns ``(N, P, D)``."""
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.mlp(self.norm2(x)))


class ViT(nn.Module):
    """Patch embedding + learned positional embedding + pre-LN transformer layers + final LayerNorm.

    Args:
        in_channels: input channels.
        image_size: input size ``(H, W)``.
        embed_dim: D.
        depth: number of transformer layers.
        num_heads: attention heads.
        mlp_ratio: hidden width of the MLP as a multiple of D.
        patch_size, patch_stride, second_conv, embed_norm: see :class:`PatchEmbed`.
        dropout: dropout in attention and after each residual branch.

    Shapes:
        ``(N, C, H, W) float -> (N, P, D)``.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: tuple[int, int],
        embed_dim: int = 128,
        depth: int = 1,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        patch_size: int = 8,
        patch_stride: int = 4,
        second_conv: bool = True,
        embed_norm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(
            in_channels, image_size, embed_dim, patch_size, patch_stride, second_conv, embed_norm
        )
        self.num_patches = self.patch_embed.num_patches
        self.embed_dim = embed_dim
        self.pos_embed = nn.Parameter(nn.init.trunc_normal_(torch.zeros(1, self.num_patches, embed_dim), std=INIT_STD))
        self.layers = nn.Sequential(*(TransformerLayer(embed_dim, num_heads, mlp_ratio, dropout) for _ in range(depth)))
        self.norm = nn.LayerNorm(embed_dim)
        self.apply(_init_vit_weights)

    def forward(self, x: Tensor) -> Tensor:
        """Args: x ``(N, C, H, W)``. Returns ``(N, P, D)``."""
        return self.norm(self.layers(self.patch_embed(x) + self.pos_embed))


class SpatialEmb(nn.Module):
    """Compress patch features with a learned per-channel weighting, mixing in the proprioceptive state.

    ``f = feat^T (N, D, P)``; append the state to every row ``(N, D, P + S)``;
    ``y = ReLU(LN(Linear(P + S -> E)(f)))`` ``(N, D, E)``; ``z = sum_rows(W * y)`` with ``W`` ``(1, D, E)``
    initialised N(0, 1); then dropout.

    Args:
        num_patch: P.
        patch_dim: D.
        prop_dim: S, flattened state size (0: no state).
        proj_dim: E, the output width.
        dropout: dropout on the output.

    Shapes:
        ``forward(feat (N, P, D), prop (N, S)) -> (N, E)``.
    """

    def __init__(self, num_patch: int, patch_dim: int, prop_dim: int, proj_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.prop_dim = prop_dim
        self.input_proj = nn.Sequential(nn.Linear(num_patch + prop_dim, proj_dim), nn.LayerNorm(proj_dim), nn.ReLU())
        self.weight = nn.Parameter(torch.randn(1, patch_dim, proj_dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, feat: Tensor, prop: Tensor) -> Tensor:
        """Args: feat ``(N, P, D)``, prop ``(N, S)``. Returns ``(N, E)``."""
        f = feat.transpose(1, 2)
        if self.prop_dim > 0:
            f = torch.cat((f, prop.unsqueeze(1).expand(-1, f.shape[1], -1)), dim=-1)
        y = self.input_proj(f)
        return self.dropout((y * self.weight).sum(dim=1))


class LinearCompress(nn.Module):
    """Flat compression ``Linear(P * D -> E) - LayerNorm - Dropout - ReLU`` (the reference's spatial_emb=0 path).

    Shapes: ``forward(feat (N, P, D), prop) -> (N, E)``; ``prop`` is ignored (the state is appended later).
    """

    def __init__(self, num_patch: int, patch_dim: int, proj_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(num_patch * patch_dim, proj_dim), nn.LayerNorm(proj_dim), nn.Dropout(dropout), nn.ReLU()
        )

    def forward(self, feat: Tensor, prop: Tensor) -> Tensor:
        """Args: feat ``(N, P, D)``, prop (unused). Returns ``(N, E)``."""
        return self.net(feat.flatten(1))


class ViTEncoder(ImageEncoder):
    """Pixel encoder: one ViT trunk shared by all cameras, one compressor per camera.

    Args:
        image_size: stored image size ``H`` or ``(H, W)`` (96 in DPPO's robomimic configs).
        num_img: cameras, concatenated on the channel axis of ``rgb``.
        img_cond_steps: most recent frames used, stacked on channels (oldest first).
        state_dim: flattened proprioceptive state ``To * Do`` mixed into SpatialEmb (0: none).
        patch_size, patch_stride, second_conv, embed_norm: patch embedding (see :class:`PatchEmbed`).
        embed_dim: ViT width D.
        depth: ViT layers.
        num_heads: attention heads.
        mlp_ratio: ViT MLP width multiple.
        dropout: dropout inside the ViT layers.
        spatial_emb: SpatialEmb output width per camera; 0 uses the flat Linear compression instead.
        visual_feature_dim: output width per camera of the flat compression (when ``spatial_emb == 0``).
        compress_dropout: dropout on each camera's compressed feature.
        augment: augmentation module (e.g. ``RandomShift(4)``), active in training mode only; None for none.

    Shapes:
        ``forward(rgb (B, To_img, 3 * num_img, H, W), state (B, To, Do)) -> (B, feature_dim)`` with
        ``feature_dim = num_img * (spatial_emb or visual_feature_dim)``.
    """

    def __init__(
        self,
        image_size: int | Sequence[int] = 96,
        num_img: int = 1,
        img_cond_steps: int = 1,
        state_dim: int = 0,
        patch_size: int = 8,
        patch_stride: int = 4,
        second_conv: bool = True,
        embed_norm: bool = False,
        embed_dim: int = 128,
        depth: int = 1,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        spatial_emb: int = 128,
        visual_feature_dim: int = 128,
        compress_dropout: float = 0.0,
        augment: nn.Module | None = None,
    ) -> None:
        super().__init__(image_size, num_img, img_cond_steps, augment)
        self.state_dim = int(state_dim)
        self.trunk = ViT(
            self.in_channels,
            self.trunk_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            patch_size=patch_size,
            patch_stride=patch_stride,
            second_conv=second_conv,
            embed_norm=embed_norm,
            dropout=dropout,
        )
        p = self.trunk.num_patches
        if spatial_emb > 0:
            heads: list[nn.Module] = [
                SpatialEmb(p, embed_dim, self.state_dim, spatial_emb, compress_dropout) for _ in range(num_img)
            ]
            per_camera = spatial_emb
        else:
            heads = [LinearCompress(p, embed_dim, visual_feature_dim, compress_dropout) for _ in range(num_img)]
            per_camera = visual_feature_dim
        # One compressor per camera (the reference's compress1/compress2), while the ViT itself is shared.
        self.compress = nn.ModuleList(heads)
        self.feature_dim = num_img * per_camera

    def forward(self, rgb: Tensor, state: Tensor) -> Tensor:
        """Encode images (and the state, through SpatialEmb).

        Args:
            rgb: ``(B, To_img, 3 * num_img, H, W)`` uint8 or float in [0, 255].
            state: ``(B, To, Do)`` with ``To * Do == state_dim`` when the state is used.

        Returns:
            ``(B, feature_dim)``.
        """
        b = rgb.shape[0]
        prop = state.reshape(b, -1)
        if self.state_dim and prop.shape[1] != self.state_dim:
            raise ValueError(
                f"ViTEncoder: state flattens to {prop.shape[1]} values, expected state_dim={self.state_dim}"
            )
        feat = self.trunk(self.preprocess(rgb)).unflatten(0, (b, self.num_img))  # (B, n, P, D)
        return torch.cat([head(feat[:, i], prop) for i, head in enumerate(self.compress)], dim=-1)
