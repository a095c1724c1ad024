"""Transformer trunk shared by the Gaussian and GMM transformer policies (as in DPPO).

The observation is a single memory token; the action chunk is decoded by ``Ta`` learned queries that
cross-attend to it. The heads that turn the per-step features into means / stds / mixture logits live with
each policy family.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model.common.modules import get_activation

INIT_STD = 0.02


def init_transformer_weights(module: nn.Module) -> None:
    """GPT-style init: Linear and attention projections N(0, 0.02) with zero bias, LayerNorm (1, 0).

    Apply with ``model.apply(init_transformer_weights)``. The attention input projection is a raw parameter
    rather than an ``nn.Linear``, so it is handled explicitly to get the same scale as every other projection.
    """
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.MultiheadAttention):
        if module.in_proj_weight is not None:
            nn.init.normal_(module.in_proj_weight, mean=0.0, std=INIT_STD)
        if module.in_proj_bias is not None:
            nn.init.zeros_(module.in_proj_bias)
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _decoder_activation(name: str) -> str | nn.Module:
    """``nn.TransformerDecoderLayer`` takes "relu"/"gelu" strings natively; other names become modules."""
    lowered = name.lower()
    if lowered in ("relu", "gelu"):
        return lowered
    return get_activation(name)


class ObsToChunkTransformer(nn.Module):
    """Observation token -> ``Ta`` decoded feature vectors.

    * memory: cond ``(B, 1, cond_dim)`` -> Linear -> + learned position embedding -> dropout ->
      encoder MLP (Linear(n, 4n) - Mish - Linear(4n, n)), shape ``(B, 1, n)``
    * queries: learned position embeddings ``(1, Ta, n)`` expanded over the batch
    * ``num_layers`` pre-norm ``nn.TransformerDecoder`` layers (feed-forward 4n, batch_first, no masks),
      then a final LayerNorm.

    Args:
        cond_dim: flattened observation size ``To * Do``.
        horizon_steps: number of decoder queries ``Ta``.
        embed_dim: model width n (must be divisible by ``num_heads``).
        num_heads: attention heads.
        num_layers: decoder layers.
        activation_type: activation of the decoder feed-forward blocks ("gelu", "relu" or any
            ``get_activation`` name).
        dropout: dropout inside the decoder layers and on the embedded memory token.

    Shapes:
        ``forward(state (B, cond_dim)) -> (B, Ta, n)``.
    """

    def __init__(
        self,
        cond_dim: int,
        horizon_steps: int,
        embed_dim: int = 256,
        num_heads: int = 8,
        num_layers: int = 6,
        activation_type: str = "gelu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        self.cond_dim = cond_dim
        self.horizon_steps = horizon_steps
        self.embed_dim = embed_dim
        self.cond_emb = nn.Linear(cond_dim, embed_dim)
        self.cond_pos_emb = nn.Parameter(nn.init.normal_(torch.zeros(1, 1, embed_dim), std=INIT_STD))
        self.query_pos_emb = nn.Parameter(nn.init.normal_(torch.zeros(1, horizon_steps, embed_dim), std=INIT_STD))
        self.emb_dropout = nn.Dropout(dropout)
        self.encoder = nn.Sequential(
            nn.Linear(embed_dim, 4 * embed_dim), nn.Mish(), nn.Linear(4 * embed_dim, embed_dim)
        )
        layer = nn.TransformerDecoderLayer(
            d_model=embed_dim,
            nhead=num_heads,
            dim_feedforward=4 * embed_dim,
            dropout=dropout,
            activation=_decoder_activation(activation_type),
            batch_first=True,
            norm_first=True,
        )
        self.decoder = nn.TransformerDecoder(layer, num_layers=num_layers)
        self.final_norm = nn.LayerNorm(embed_dim)
        # Position embeddings are Parameters, not modules, so apply() leaves their N(0, 0.02) init alone.
        self.apply(init_transformer_weights)

    def forward(self, state: Tensor) -> Tensor:
        """Decode per-step features.

        Args:
            state: ``(B, cond_dim)`` flattened observation.

        Returns:
            ``(B, Ta, n)`` features after the final LayerNorm.
        """
        memory = self.emb_dropout(self.cond_emb(state.unsqueeze(1)) + self.cond_pos_emb)
        memory = self.encoder(memory)
        queries = self.query_pos_emb.expand(state.shape[0], -1, -1)
        return self.final_norm(self.decoder(tgt=queries, memory=memory))
