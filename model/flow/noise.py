"""The learned exploration noise of a fine-tuned flow policy (docs/algorithms.md#flow-policies).

Fine-tuning turns each fine-tuned Euler step of a flow policy into a Gaussian transition; this module gives its
standard deviation, per action dimension, bounded to [min_std, max_std]:

    sigma = exp(log min_std + (tanh(h) + 1) / 2 * (log max_std - log min_std))

where h is the output of a small MLP on [one-hot of the fine-tuned step, flattened state] (`state_dependent`), or a
learned vector per fine-tuned step (state-independent).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from model.common.mlp import MLP


class FlowNoise(nn.Module):
    """Bounded std of the K' fine-tuned Euler steps.

    Args:
        cond_dim: flattened state size To * Do (used when ``state_dependent``).
        action_dim: Da; the std is per action dimension and shared over the Ta steps of a chunk.
        n_steps: K', the number of fine-tuned steps (0: an evaluation config's placeholder; the policy then drops it).
        min_std: lower bound of the std, > 0.
        max_std: upper bound of the std, >= min_std.
        state_dependent: an MLP on [step one-hot, state]; otherwise one learned vector per step.
        mlp_dims: hidden widths of that MLP.
        activation_type: its hidden activation.
    """

    def __init__(
        self,
        cond_dim: int,
        action_dim: int,
        n_steps: int,
        min_std: float = 0.08,
        max_std: float = 0.16,
        state_dependent: bool = True,
        mlp_dims: Sequence[int] = (64, 64),
        activation_type: str = "Tanh",
    ) -> None:
        super().__init__()
        if n_steps < 0:
            raise ValueError(f"FlowNoise needs n_steps >= 0 fine-tuned steps, got {n_steps}")
        if not 0 < min_std <= max_std:
            raise ValueError(f"FlowNoise needs 0 < min_std <= max_std, got {min_std}, {max_std}")
        self.action_dim = action_dim
        self.n_steps = n_steps
        self.log_min, self.log_max = math.log(min_std), math.log(max_std)
        self.state_dependent = state_dependent
        if state_dependent:
            self.mlp: nn.Module | None = MLP(
                [n_steps + cond_dim, *mlp_dims, action_dim], activation_type=activation_type
            )
            self.per_step = None
        else:
            self.mlp = None
            self.per_step = nn.Parameter(torch.zeros(n_steps, action_dim))  # tanh(0): the bounds' middle

    def forward(self, state: Tensor, step: Tensor) -> Tensor:
        """Std of fine-tuned step ``step`` for each row.

        Args:
            state: ``(B, To, Do)`` observations.
            step: ``(B,)`` long, the fine-tuned step index in [0, K').

        Returns:
            ``(B, 1, Da)``: broadcasts over the chunk's Ta steps.
        """
        if self.mlp is not None:
            one_hot = nn.functional.one_hot(step, self.n_steps).to(state.dtype)
            h = self.mlp(torch.cat((one_hot, state.flatten(1)), dim=1))
        else:
            assert self.per_step is not None
            h = self.per_step[step]
        log_std = self.log_min + 0.5 * (torch.tanh(h) + 1.0) * (self.log_max - self.log_min)
        return log_std.exp().unsqueeze(1)


__all__ = ["FlowNoise"]
