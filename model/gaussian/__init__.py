"""Diagonal-Gaussian action-chunk policies and their MLP / transformer networks."""

from model.gaussian.mlp import GaussianMLP
from model.gaussian.model import GaussianModel
from model.gaussian.transformer import GaussianTransformer

__all__ = ["GaussianMLP", "GaussianModel", "GaussianTransformer"]
