"""The common image-encoder interface and the glue that feeds encoded observations to state networks.

Every encoder maps ``rgb (B, To_img, C, H, W)`` (uint8 or float in [0, 255]; ``C = 3 * num_img``, cameras
concatenated on channels, history oldest first) and ``state (B, To, Do)`` to a flat feature ``(B, feature_dim)``.

Layout decisions shared by all encoders:

* Only the last ``img_cond_steps`` frames are used, and they are **stacked on channels per camera**: camera i sees
  a ``(3 * img_cond_steps, H, W)`` image (oldest frame first), as in the reference. A trunk therefore takes
  ``3 * img_cond_steps`` input channels, and history costs no extra trunk passes.
* Cameras are encoded separately (the trunk runs on ``B * num_img`` images), each camera has its own feature
  head, and the per-camera features are concatenated.
* Augmentation (an ``nn.Module`` such as :class:`~model.encoder.augment.RandomShift`) runs on the float images
  before normalisation, so it follows ``train()`` / ``eval()``; normalisation is ``x / 255 - 0.5``.

Networks built for the flattened state (DiffusionMLP, Unet1D, GaussianMLP, critics, ...) are reused for pixels by
handing them ``{"state": [features, flattened state]}`` as a single observation token (see
:func:`encode_observation` and :func:`build_head`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn


def pair(size: int | Sequence[int]) -> tuple[int, int]:
    """``96 -> (96, 96)``; ``[84, 76] -> (84, 76)``."""
    if isinstance(size, int):
        return size, size
    values = [int(s) for s in size]
    if len(values) != 2:
        raise ValueError(f"expected an image size H or (H, W), got {size}")
    return values[0], values[1]


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output length of a convolution or pooling window along one axis."""
    return (size + 2 * padding - kernel) // stride + 1


class ImageEncoder(nn.Module):
    """Base class: frame selection, camera split, augmentation and normalisation.

    Subclasses build their trunk for ``trunk_size`` (the image size after augmentation) and
    ``in_channels = 3 * img_cond_steps`` channels, set ``feature_dim``, and implement
    ``forward(rgb (B, To_img, C, H, W), state (B, To, Do)) -> (B, feature_dim)`` on top of :meth:`preprocess`.

    Args:
        image_size: stored image size ``H`` or ``(H, W)``.
        num_img: number of cameras (``C = 3 * num_img``).
        img_cond_steps: number of most recent frames used.
        augment: an augmentation module with ``output_size(h, w)`` (RandomShift, RandomCrop) or None.
    """

    feature_dim: int

    def __init__(
        self,
        image_size: int | Sequence[int] = 96,
        num_img: int = 1,
        img_cond_steps: int = 1,
        augment: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if num_img < 1 or img_cond_steps < 1:
            raise ValueError(f"num_img and img_cond_steps must be >= 1, got {num_img}, {img_cond_steps}")
        self.image_size = pair(image_size)
        self.num_img = int(num_img)
        self.img_cond_steps = int(img_cond_steps)
        self.in_channels = 3 * self.img_cond_steps
        self.augment = augment
        output_size = getattr(augment, "output_size", None)
        self.trunk_size: tuple[int, int] = output_size(*self.image_size) if output_size else self.image_size

    def preprocess(self, rgb: Tensor) -> Tensor:
        """Select, stack, augment and normalise images.

        Args:
            rgb: ``(B, To_img, 3 * num_img, H, W)`` uint8 or float in [0, 255], with ``To_img >= img_cond_steps``.

        Returns:
            ``(B * num_img, 3 * img_cond_steps, h, w)`` float in [-0.5, 0.5], camera-major within each sample
            (row ``b * num_img + i`` is camera i of sample b); ``(h, w) = trunk_size``.
        """
        if rgb.dim() != 5:
            raise ValueError(f"rgb must be (B, To_img, C, H, W), got shape {tuple(rgb.shape)}")
        b, t, c, h, w = rgb.shape
        if c != 3 * self.num_img or (h, w) != self.image_size:
            raise ValueError(
                f"rgb frames must be (C={3 * self.num_img}, H, W={self.image_size}) for num_img={self.num_img}, "
                f"got {(c, h, w)}"
            )
        if t < self.img_cond_steps:
            raise ValueError(f"rgb has {t} frames but img_cond_steps={self.img_cond_steps}")
        steps = self.img_cond_steps
        x = rgb[:, t - steps :].reshape(b, steps, self.num_img, 3, h, w)
        # (B, T, n, 3, H, W) -> (B, n, T, 3, H, W): each camera's history is stacked on its channels.
        x = x.transpose(1, 2).reshape(b * self.num_img, steps * 3, h, w).float()
        if self.augment is not None:
            x = self.augment(x)
        return x / 255.0 - 0.5


def encode_observation(encoder: nn.Module, cond: dict[str, Tensor], state_dim: int) -> Tensor:
    """``[encoder(rgb, state), flatten(state)]``, the condition of every pixel network (reference order).

    Args:
        encoder: an :class:`ImageEncoder`.
        cond: ``{"state": (B, To, Do), "rgb": (B, To_img, C, H, W)}``.
        state_dim: expected ``To * Do`` (checked, so a wrong ``obs_dim`` fails with a clear message).

    Returns:
        ``(B, encoder.feature_dim + state_dim)``.
    """
    if "rgb" not in cond:
        raise KeyError(f"a pixel network needs cond['rgb']; got keys {sorted(cond)}")
    state = cond["state"]
    flat = state.reshape(state.shape[0], -1)
    if flat.shape[1] != state_dim:
        raise ValueError(f"cond['state'] flattens to {flat.shape[1]} values but cond_dim (To*Do) is {state_dim}")
    return torch.cat((encoder(cond["rgb"], state), flat), dim=-1)


def build_head(head: Callable[..., nn.Module] | nn.Module, cond_dim: int, where: str) -> nn.Module:
    """Build a state network for the encoded condition width.

    Args:
        head: a factory that takes ``cond_dim=`` (e.g. ``functools.partial(DiffusionMLP, ...)``, which Hydra
            builds from a node with ``_partial_: true``), or an already built module whose ``cond_dim`` matches.
        cond_dim: ``encoder.feature_dim + To * Do``.
        where: the owner's name for error messages.
    """
    if isinstance(head, nn.Module):
        built = getattr(head, "cond_dim", cond_dim)
        if built != cond_dim:
            raise ValueError(
                f"{where}: the given network has cond_dim={built} but the encoded condition has {cond_dim}"
            )
        return head
    keywords = getattr(head, "keywords", {})
    if "cond_dim" in keywords:
        raise ValueError(
            f"{where}: do not set cond_dim on the inner network; it is computed as encoder.feature_dim + cond_dim "
            f"({cond_dim})"
        )
    return head(cond_dim=cond_dim)
