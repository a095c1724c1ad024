"""Pixel denoisers: an image encoder in front of any state denoiser (DiffusionMLP, Unet1D, DiffusionTransformer).

The encoded condition ``[encoder(rgb, state), flatten(state)]`` is handed to the state denoiser as a single
observation token ``{"state": (B, 1, F)}``, so DiffusionMLP sees ``[x, time_emb, feat, state]`` and Unet1D
``g = [time, feat, state]``: the reference's VisionDiffusionMLP / VisionUnet1D inputs, in the same order.

Encode once per sample: :class:`DiffusionModel` calls ``network.encode_cond(cond)`` once before its denoising
loop (and before scoring a chain) and passes the result to every ``network(x, t, encoded)`` call; ``forward``
recognises an already encoded condition by its key and skips the encoder.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from model.encoder.base import ImageEncoder, build_head, encode_observation

ENCODED_KEY = "encoded_obs"
"""Key of the encoded observation ``(B, F)`` in the dict returned by :meth:`VisionDenoiser.encode_cond`."""


class VisionDenoiser(nn.Module):
    """Image encoder + state denoiser ``f(x (B, Ta, Da), t (B,), cond) -> (B, Ta, Da)``.

    Args:
        encoder: an image encoder (:class:`~model.encoder.ViTEncoder`, :class:`~model.encoder.ResNetEncoder`).
        denoiser: a factory of the state denoiser taking ``cond_dim=`` (Hydra node with ``_partial_: true``, e.g.
            ``DiffusionMLP`` with its usual keys except ``cond_dim``), or a built denoiser whose ``cond_dim``
            equals ``encoder.feature_dim + cond_dim``.
        cond_dim: flattened proprioceptive state size ``To * Do``.

    Shapes:
        ``forward(x (B, Ta, Da), time (B,), cond{"state": (B, To, Do), "rgb": (B, To_img, C, H, W)})
        -> (B, Ta, Da)``; ``cond`` may instead be the output of :meth:`encode_cond`.
    """

    def __init__(self, encoder: ImageEncoder, denoiser: Callable[..., nn.Module] | nn.Module, cond_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.cond_dim = int(cond_dim)
        self.feature_dim = int(encoder.feature_dim) + self.cond_dim
        self.denoiser = build_head(denoiser, self.feature_dim, "VisionDenoiser")

    def encode_cond(self, cond: dict[str, Tensor]) -> dict[str, Tensor]:
        """Run the encoder once.

        Args:
            cond: ``{"state": (B, To, Do), "rgb": (B, To_img, C, H, W)}``.

        Returns:
            ``{ENCODED_KEY: (B, feature_dim)}``, accepted by :meth:`forward` in place of ``cond``. A dict of
            tensors with batch first, so callers can index or repeat it like any condition.
        """
        if ENCODED_KEY in cond:
            return cond
        return {ENCODED_KEY: encode_observation(self.encoder, cond, self.cond_dim)}

    def forward(self, x: Tensor, time: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """Predict the denoising target.

        Args:
            x: ``(B, Ta, Da)`` noisy action chunk.
            time: ``(B,)`` integer denoising index.
            cond: raw observation dict or the output of :meth:`encode_cond`.

        Returns:
            ``(B, Ta, Da)``.
        """
        feature = self.encode_cond(cond)[ENCODED_KEY]
        return self.denoiser(x, time, {"state": feature.unsqueeze(1)})
