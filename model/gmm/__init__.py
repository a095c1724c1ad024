"""Gaussian-mixture action-chunk policies and their MLP / transformer networks."""

from model.gmm.mlp import GMMMLP
from model.gmm.model import GMMModel
from model.gmm.transformer import GMMTransformer

__all__ = ["GMMMLP", "GMMModel", "GMMTransformer"]
