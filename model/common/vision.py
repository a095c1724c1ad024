"""Pixel versions of observation-conditioned networks: an image encoder in front of a state network.

:class:`VisionNetwork` serves every network whose first argument is the observation dict: Gaussian and GMM
policy networks (``GaussianMLP``, ``GaussianTransformer``, ``GMMMLP``, ...) and critics (``CriticObs``,
``CriticObsAct``). The state network sees ``{"state": [encoder features, flattened state]}`` as one observation
token, so its ``cond_dim`` is ``encoder.feature_dim + To * Do`` (computed here, never set in the config).

Example config (a pixel critic for fine-tuning)::

    critic:
      _target_: model.common.vision.VisionNetwork
      cond_dim: ${eval:'${obs_dim} * ${cond_steps}'}
      encoder: {_target_: model.encoder.ViTEncoder, image_size: 96, state_dim: ..., augment: null}
      head: {_target_: model.common.critic.CriticObs, _partial_: true, mlp_dims: [256, 256, 256]}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from model.encoder.base import ImageEncoder, build_head, encode_observation


class VisionNetwork(nn.Module):
    """Image encoder + observation-conditioned head ``head(cond, *args)``.

    Args:
        encoder: an image encoder (:class:`~model.encoder.ViTEncoder`, :class:`~model.encoder.ResNetEncoder`).
        head: a factory of the state network taking ``cond_dim=`` (Hydra node with ``_partial_: true``), or a
            built network whose ``cond_dim`` equals ``encoder.feature_dim + cond_dim``.
        cond_dim: flattened proprioceptive state size ``To * Do``.

    Shapes:
        ``forward(cond{"state": (B, To, Do), "rgb": (B, To_img, C, H, W)}, *args)`` returns whatever the head
        returns for ``{"state": (B, 1, feature_dim)}`` (e.g. ``(mean, scale)`` or values ``(B,)``).
    """

    def __init__(self, encoder: ImageEncoder, head: Callable[..., nn.Module] | nn.Module, cond_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.cond_dim = int(cond_dim)
        self.feature_dim = int(encoder.feature_dim) + self.cond_dim
        self.head = build_head(head, self.feature_dim, "VisionNetwork")

    def forward(self, cond: dict[str, Tensor], *args: Any) -> Any:
        """Encode ``cond`` and call the head with it (extra arguments, e.g. a critic's action, pass through)."""
        feature = encode_observation(self.encoder, cond, self.cond_dim)
        return self.head({"state": feature.unsqueeze(1)}, *args)
