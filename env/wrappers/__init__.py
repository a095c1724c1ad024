"""Wrappers shared by all suites; importing this package registers them under DPPO's config names."""

from env.wrappers.guard import SubEnvError, SubEnvGuard
from env.wrappers.multi_step import MultiStep
from env.wrappers.normalization import LowdimNormalization, Normalization, RobomimicImage, RobomimicLowdim
from env.wrappers.video import VideoRecorder

__all__ = [
    "LowdimNormalization",
    "MultiStep",
    "Normalization",
    "RobomimicImage",
    "RobomimicLowdim",
    "SubEnvError",
    "SubEnvGuard",
    "VideoRecorder",
]
