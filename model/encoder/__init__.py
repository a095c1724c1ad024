"""Pixel encoders: ``forward(rgb (B, To_img, C, H, W), state (B, To, Do)) -> (B, feature_dim)``.

* :class:`ViTEncoder`: small ViT + SpatialEmb per camera (DPPO's pixel configs).
* :class:`ResNetEncoder`: GroupNorm ResNet-18 + spatial-softmax keypoints (robomimic / Diffusion Policy).
* :class:`RandomShift`, :class:`RandomCrop`: augmentations active in training mode only.
"""

from model.encoder.augment import RandomCrop, RandomShift, random_shift
from model.encoder.base import ImageEncoder, build_head, encode_observation
from model.encoder.resnet import ResNet18, ResNetEncoder, SpatialSoftmax
from model.encoder.vit import SpatialEmb, ViT, ViTEncoder

__all__ = [
    "ImageEncoder",
    "RandomCrop",
    "RandomShift",
    "ResNet18",
    "ResNetEncoder",
    "SpatialEmb",
    "SpatialSoftmax",
    "ViT",
    "ViTEncoder",
    "build_head",
    "encode_observation",
    "random_shift",
]
