"""Transformer denoiser in the Diffusion-Policy style (time and observations as cross-attention memory).

* Memory (the condition): one token for the denoising time (sinusoidal embedding of width n) followed by
  ``n_obs_steps`` observation tokens (``Linear(obs token -> n)``), plus a learned position embedding, then dropout
  and an encoder (an MLP ``Linear(n, 4n) - Mish - Linear(4n, n)``, or ``n_cond_layers`` transformer-encoder layers).
* Queries: the noisy action chunk, ``Linear(Da -> n)`` per step plus a learned position embedding, then dropout.
* ``n_layer`` pre-LayerNorm transformer-decoder layers (GELU feed-forward 4n): self-attention over the horizon,
  **causal** when ``causal_attn`` (step i sees steps <= i), then cross-attention to the whole memory.
* Final LayerNorm and ``Linear(n -> Da)``.

Unlike Diffusion Policy, there is no memory mask: here the action window starts at the newest observation (the
history ends at the window start), so every observation token lies in the past of every action step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model.common.modules import SinusoidalPosEmb
from model.common.transformer import INIT_STD, init_transformer_weights


class DiffusionTransformer(nn.Module):
    """Denoiser ``f(x (B, Ta, Da), t (B,), cond) -> (B, Ta, Da)``.

    Args:
        action_dim: Da.
        horizon_steps: Ta (number of query tokens).
        cond_dim: flattened condition size; split into ``n_obs_steps`` tokens of ``cond_dim / n_obs_steps`` values.
            State configs use ``obs_dim * cond_steps`` with ``n_obs_steps = cond_steps`` (one token per observation
            step); behind a :class:`~model.diffusion.vision.VisionDenoiser` the condition is one token.
        n_obs_steps: number of observation tokens.
        n_layer: decoder layers.
        n_head: attention heads (must divide ``n_emb``).
        n_emb: model width n.
        p_drop_emb: dropout on the embedded queries and memory tokens.
        p_drop_attn: dropout inside the attention / feed-forward blocks.
        causal_attn: causal self-attention over the action horizon.
        n_cond_layers: transformer-encoder layers on the memory; 0 uses the MLP encoder.
    """

    causal_mask: Tensor

    def __init__(
        self,
        action_dim: int,
        horizon_steps: int,
        cond_dim: int,
        n_obs_steps: int = 1,
        n_layer: int = 8,
        n_head: int = 4,
        n_emb: int = 256,
        p_drop_emb: float = 0.0,
        p_drop_attn: float = 0.01,
        causal_attn: bool = True,
        n_cond_layers: int = 0,
    ) -> None:
        super().__init__()
        if n_emb % n_head:
            raise ValueError(f"n_emb ({n_emb}) must be divisible by n_head ({n_head})")
        if n_obs_steps < 1 or cond_dim % n_obs_steps:
            raise ValueError(f"cond_dim ({cond_dim}) must split into n_obs_steps={n_obs_steps} equal tokens")
        self.action_dim = action_dim
        self.horizon_steps = horizon_steps
        self.cond_dim = cond_dim
        self.n_obs_steps = n_obs_steps
        self.token_dim = cond_dim // n_obs_steps
        self.causal_attn = causal_attn

        self.input_emb = nn.Linear(action_dim, n_emb)
        self.pos_emb = nn.Parameter(nn.init.normal_(torch.zeros(1, horizon_steps, n_emb), std=INIT_STD))
        self.time_emb = SinusoidalPosEmb(n_emb)
        self.cond_obs_emb = nn.Linear(self.token_dim, n_emb)
        self.cond_pos_emb = nn.Parameter(nn.init.normal_(torch.zeros(1, 1 + n_obs_steps, n_emb), std=INIT_STD))
        self.drop = nn.Dropout(p_drop_emb)
        if n_cond_layers > 0:
            enc_layer = nn.TransformerEncoderLayer(
                n_emb, n_head, 4 * n_emb, p_drop_attn, activation="gelu", batch_first=True, norm_first=True
            )
            self.encoder: nn.Module = nn.TransformerEncoder(enc_layer, n_cond_layers, enable_nested_tensor=False)
        else:
            self.encoder = nn.Sequential(nn.Linear(n_emb, 4 * n_emb), nn.Mish(), nn.Linear(4 * n_emb, n_emb))
        dec_layer = nn.TransformerDecoderLayer(
            n_emb, n_head, 4 * n_emb, p_drop_attn, activation="gelu", batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerDecoder(dec_layer, n_layer)
        # True above the diagonal = "may not attend": step i only sees steps 0..i of the (noisy) chunk.
        mask = torch.ones(horizon_steps, horizon_steps, dtype=torch.bool).triu(diagonal=1)
        self.register_buffer("causal_mask", mask, persistent=False)
        self.ln_f = nn.LayerNorm(n_emb)
        self.head = nn.Linear(n_emb, action_dim)
        # Position embeddings are Parameters, not modules, so apply() leaves their N(0, 0.02) init alone.
        self.apply(init_transformer_weights)

    def forward(self, x: Tensor, time: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """Predict the denoising target.

        Args:
            x: ``(B, Ta, Da)`` noisy action chunk.
            time: ``(B,)`` integer denoising index.
            cond: dict with ``state`` ``(B, To, Do)`` (``To * Do == cond_dim``).

        Returns:
            ``(B, Ta, Da)``.
        """
        b, ta, _ = x.shape
        if ta != self.horizon_steps:
            raise ValueError(f"DiffusionTransformer was built for horizon_steps={self.horizon_steps}, got Ta={ta}")
        state = cond["state"].reshape(b, -1)
        if state.shape[1] != self.cond_dim:
            raise ValueError(f"cond['state'] flattens to {state.shape[1]} values but cond_dim is {self.cond_dim}")
        tokens = torch.cat(
            (self.time_emb(time).unsqueeze(1), self.cond_obs_emb(state.view(b, self.n_obs_steps, self.token_dim))),
            dim=1,
        )
        memory = self.encoder(self.drop(tokens + self.cond_pos_emb))  # (B, 1 + To, n)
        h = self.drop(self.input_emb(x) + self.pos_emb)  # (B, Ta, n)
        mask = self.causal_mask if self.causal_attn else None
        h = self.decoder(h, memory, tgt_mask=mask, tgt_is_causal=self.causal_attn)
        return self.head(self.ln_f(h))
