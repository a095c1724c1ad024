"""ResNet-18 trunk with spatial-softmax keypoints (the robomimic / Diffusion Policy visual core), in plain torch.

Differences from torchvision's ResNet-18, on purpose:

* GroupNorm instead of BatchNorm (``channels // group_norm_divisor`` groups, as Diffusion Policy does): the
  pretraining EMA averages parameters only, so BatchNorm running statistics would not follow the averaged
  weights, and per-sample normalisation also keeps rollout batches of any size consistent with training.
* No pretrained weights (trained from scratch) and any number of input channels (history stacked on channels).
* The global average pool and the classifier are replaced by spatial softmax: a 1x1 convolution to ``num_kp``
  keypoint maps, a softmax over the positions of each map, and the expected (x, y) position of each keypoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from model.encoder.base import ImageEncoder, conv_out


def group_norm(channels: int, divisor: int = 16) -> nn.GroupNorm:
    """GroupNorm with ``channels // divisor`` groups (at least one)."""
    return nn.GroupNorm(max(1, channels // divisor), channels)


class BasicBlock(nn.Module):
    """``ReLU(GN(conv3x3(ReLU(GN(conv3x3(x))))) + shortcut(x))``; the shortcut is a strided 1x1 conv + GN when
    the shape changes.

    Shapes: ``(N, C_in, H, W) -> (N, C_out, H / stride, W / stride)``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, group_norm_divisor: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            group_norm(out_channels, group_norm_divisor),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            group_norm(out_channels, group_norm_divisor),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                group_norm(out_channels, group_norm_divisor),
            )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """Args: x ``(N, C_in, H, W)``. Returns ``(N, C_out, H', W')``."""
        return self.act(self.body(x) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 convolutional trunk (no pooling head): stem conv7/2 + maxpool/2, four stages of BasicBlocks with
    widths ``w, 2w, 4w, 8w`` and strides 1, 2, 2, 2, so the output is 1/32 of the input size.

    Args:
        in_channels: input channels.
        base_width: w (64 for the standard ResNet-18).
        blocks: BasicBlocks per stage ((2, 2, 2, 2) for ResNet-18).
        group_norm_divisor: channels per GroupNorm group.

    Shapes:
        ``(N, C, H, W) -> (N, 8w, H', W')`` with ``(H', W') = output_size(H, W)``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        base_width: int = 64,
        blocks: Sequence[int] = (2, 2, 2, 2),
        group_norm_divisor: int = 16,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, base_width, 7, stride=2, padding=3, bias=False),
            group_norm(base_width, group_norm_divisor),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        ]
        channels = base_width
        for stage, n_blocks in enumerate(blocks):
            out = base_width * 2**stage
            for i in range(n_blocks):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(BasicBlock(channels, out, stride, group_norm_divisor))
                channels = out
        self.net = nn.Sequential(*layers)
        self.out_channels = channels
        self.n_downsampling_stages = len(blocks) - 1
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of the output feature map for an input of ``(height, width)``."""

        def one(s: int) -> int:
            s = conv_out(conv_out(s, 7, 2, 3), 3, 2, 1)
            for _ in range(self.n_downsampling_stages):
                s = conv_out(s, 3, 2, 1)
            return s

        return one(height), one(width)

    def forward(self, x: Tensor) -> Tensor:
        """Args: x ``(N, C, H, W)``. Returns ``(N, 8w, H', W')``."""
        return self.net(x)


class SpatialSoftmax(nn.Module):
    """Keypoints as expected positions: ``1x1 conv -> softmax over H*W per map -> E[(x, y)]`` in [-1, 1].

    Args:
        in_channels: feature-map channels.
        height, width: feature-map size.
        num_kp: number of keypoints K.
        temperature: softmax temperature (initial value if learned).
        learnable_temperature: learn the temperature.

    Shapes:
        ``(N, C, H, W) -> (N, 2 K)`` ordered ``[x_1, y_1, x_2, y_2, ...]``.
    """

    pos: Tensor

    def __init__(
        self,
        in_channels: int,
        height: int,
        width: int,
        num_kp: int = 32,
        temperature: float = 1.0,
        learnable_temperature: bool = False,
    ) -> None:
        super().__init__()
        if height * width < 2:
            raise ValueError(
                f"spatial softmax over a {height}x{width} feature map gives constant keypoints; use larger images "
                "(ResNet-18 divides the size by 32, so at least 33x33 pixels)"
            )
        self.keypoints = nn.Conv2d(in_channels, num_kp, 1)
        if temperature <= 0:
            raise ValueError(f"spatial softmax temperature must be positive, got {temperature}")
        log_t = torch.tensor(float(temperature)).log()
        if learnable_temperature:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
        # (H*W, 2) grid of (x, y) positions; a function of the shape only, so kept out of checkpoints.
        self.register_buffer("pos", torch.stack((xs.flatten(), ys.flatten()), dim=-1), persistent=False)
        self.num_kp = num_kp

    def forward(self, x: Tensor) -> Tensor:
        """Args: x ``(N, C, H, W)``. Returns ``(N, 2 K)``."""
        logits = self.keypoints(x).flatten(2) / self.log_temperature.exp()  # (N, K, H*W)
        return (logits.softmax(dim=-1) @ self.pos).flatten(1)  # (N, K, 2) -> (N, 2K)


class ResNetEncoder(ImageEncoder):
    """Pixel encoder: a GroupNorm ResNet-18 per camera (or one shared), spatial-softmax keypoints and a Linear
    projection per camera; the features of all cameras are concatenated. The state is not used (it is appended to
    the feature by the network that owns the encoder).

    Args:
        image_size: stored image size ``H`` or ``(H, W)``.
        num_img: cameras, concatenated on the channel axis of ``rgb``.
        img_cond_steps: most recent frames used, stacked on channels.
        num_kp: keypoints per camera.
        visual_feature_dim: output width per camera (``Linear(2 num_kp -> visual_feature_dim)``).
        base_width: ResNet width w (64 = standard ResNet-18).
        blocks: BasicBlocks per stage.
        group_norm_divisor: channels per GroupNorm group.
        share_trunk: one ResNet for all cameras (batched); otherwise one per camera (robomimic's default).
        temperature: spatial-softmax temperature.
        learnable_temperature: learn it.
        augment: augmentation module (e.g. ``RandomCrop(84)``), active in training mode only; None for none.

    Shapes:
        ``forward(rgb (B, To_img, 3 * num_img, H, W), state) -> (B, num_img * visual_feature_dim)``.
    """

    def __init__(
        self,
        image_size: int | Sequence[int] = 96,
        num_img: int = 1,
        img_cond_steps: int = 1,
        num_kp: int = 32,
        visual_feature_dim: int = 64,
        base_width: int = 64,
        blocks: Sequence[int] = (2, 2, 2, 2),
        group_norm_divisor: int = 16,
        share_trunk: bool = False,
        temperature: float = 1.0,
        learnable_temperature: bool = False,
        augment: nn.Module | None = None,
    ) -> None:
        super().__init__(image_size, num_img, img_cond_steps, augment)
        n_trunks = 1 if share_trunk else num_img
        self.trunks = nn.ModuleList(
            ResNet18(self.in_channels, base_width, blocks, group_norm_divisor) for _ in range(n_trunks)
        )
        trunk = cast(ResNet18, self.trunks[0])
        h, w = trunk.output_size(*self.trunk_size)
        self.heads = nn.ModuleList(
            nn.Sequential(
                SpatialSoftmax(trunk.out_channels, h, w, num_kp, temperature, learnable_temperature),
                nn.Linear(2 * num_kp, visual_feature_dim),
            )
            for _ in range(num_img)
        )
        self.feature_dim = num_img * visual_feature_dim

    def forward(self, rgb: Tensor, state: Tensor | None = None) -> Tensor:
        """Encode images.

        Args:
            rgb: ``(B, To_img, 3 * num_img, H, W)`` uint8 or float in [0, 255].
            state: ``(B, To, Do)``, unused.

        Returns:
            ``(B, feature_dim)``.
        """
        b = rgb.shape[0]
        x = self.preprocess(rgb)  # (B * n, 3T, h, w), camera-major per sample
        if len(self.trunks) == 1:
            maps = self.trunks[0](x).unflatten(0, (b, self.num_img))
            per_camera = [maps[:, i] for i in range(self.num_img)]
        else:
            x = x.unflatten(0, (b, self.num_img))
            per_camera = [trunk(x[:, i]) for i, trunk in enumerate(self.trunks)]
        return torch.cat([head(m) for head, m in zip(self.heads, per_camera)], dim=-1)
