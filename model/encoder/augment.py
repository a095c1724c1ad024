"""Image augmentations for pixel policies: random shift and random crop (DPPO's RandomShiftsAug).

Both are ``nn.Module``s that randomise only in training mode (``module.training``). In evaluation mode the shift is the
identity and the crop is a centre crop. This is a deliberate fix (docs/algorithms.md#d18-augmentation) of DPPO, whose
``RandomShiftsAug`` is a plain callable that also jitters every evaluation and rollout step when ``augment`` is set.

Both work on any dtype (uint8 or float) because they only gather pixels: an integer shift of a replicate-padded
image is exactly a crop of it, so DPPO's bilinear ``grid_sample`` at integer offsets is replaced by an
index gather with the same result and no interpolation error.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.encoder.base import pair


def crop_at(images: Tensor, top: Tensor, left: Tensor, height: int, width: int) -> Tensor:
    """Cut a ``height x width`` window at a per-image offset.

    Args:
        images: ``(N, C, H, W)``.
        top: ``(N,)`` long, first row of each window, in ``[0, H - height]``.
        left: ``(N,)`` long, first column of each window, in ``[0, W - width]``.
        height: window height.
        width: window width.

    Returns:
        ``(N, C, height, width)``, same dtype as ``images``.
    """
    n, c, _, w = images.shape
    rows = top[:, None] + torch.arange(height, device=images.device)  # (N, height)
    cols = left[:, None] + torch.arange(width, device=images.device)  # (N, width)
    # Two gathers (rows, then columns) instead of a (N, C, h, w) advanced index: no index tensor as big as the
    # output is materialised per channel, and it runs as two plain kernels on GPU.
    out = images.gather(2, rows[:, None, :, None].expand(n, c, height, w))
    return out.gather(3, cols[:, None, None, :].expand(n, c, height, width))


def random_shift(images: Tensor, pad: int, generator: torch.Generator | None = None) -> Tensor:
    """Replicate-pad by ``pad`` and crop back to the original size at a random integer offset per image.

    Equivalent to shifting each image by an independent integer in ``[-pad, pad]`` along each axis, with the
    border pixels repeated. Useful on its own to augment a stored rollout batch once (docs/algorithms.md#pixel-ppo).

    Args:
        images: ``(N, C, H, W)`` float (replicate padding needs a floating dtype on CPU).
        pad: maximum shift in pixels (0 returns ``images``).
        generator: optional RNG for the offsets (on the images' device).

    Returns:
        ``(N, C, H, W)``.
    """
    if pad == 0:
        return images
    n, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    offsets = torch.randint(0, 2 * pad + 1, (2, n), device=images.device, generator=generator)
    return crop_at(padded, offsets[0], offsets[1], h, w)


class RandomShift(nn.Module):
    """Random integer shift by up to ``pad`` pixels with replicate padding, in training mode only.

    Args:
        pad: maximum shift in pixels per axis (the reference uses 4 for 96x96 images).

    Shapes:
        ``(N, C, H, W) -> (N, C, H, W)``.
    """

    def __init__(self, pad: int = 4) -> None:
        super().__init__()
        if pad < 0:
            raise ValueError(f"RandomShift pad must be >= 0, got {pad}")
        self.pad = int(pad)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Image size after the augmentation (unchanged)."""
        return height, width

    def forward(self, images: Tensor) -> Tensor:
        """Args: images ``(N, C, H, W)`` float. Returns ``(N, C, H, W)``; the input itself in eval mode."""
        if not self.training:
            return images
        return random_shift(images, self.pad)

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


class RandomCrop(nn.Module):
    """Random crop in training mode, centre crop in evaluation mode (robomimic / Diffusion Policy style).

    Args:
        size: crop size, an int (square) or ``(height, width)``.

    Shapes:
        ``(N, C, H, W) -> (N, C, h, w)`` with ``(h, w) = size``.
    """

    def __init__(self, size: int | Sequence[int]) -> None:
        super().__init__()
        self.size = pair(size)
        if min(self.size) < 1:
            raise ValueError(f"RandomCrop size must be positive, got {size}")

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Image size after the augmentation (the crop size); checks that the crop fits."""
        h, w = self.size
        if h > height or w > width:
            raise ValueError(f"RandomCrop size {self.size} is larger than the image ({height}, {width})")
        return h, w

    def forward(self, images: Tensor) -> Tensor:
        """Args: images ``(N, C, H, W)``. Returns ``(N, C, h, w)``."""
        n, _, height, width = images.shape
        h, w = self.output_size(height, width)
        if not self.training:
            top, left = (height - h) // 2, (width - w) // 2
            return images[:, :, top : top + h, left : left + w]
        tops = torch.randint(0, height - h + 1, (n,), device=images.device)
        lefts = torch.randint(0, width - w + 1, (n,), device=images.device)
        return crop_at(images, tops, lefts, h, w)

    def extra_repr(self) -> str:
        return f"size={self.size}"
