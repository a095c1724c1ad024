"""Running reward scaler of DPPO, kept with its exact maths so runs stay comparable (docs/algorithms.md#reward-scaling).

Rewards are divided by the running standard deviation of a per-env discounted return (no mean subtraction) and
clipped. Three details are DPPO's and are kept on purpose (docs/algorithms.md#k1-reward-scaler): the return's
discount is the scaler's own gamma (0.99), not `train.gamma`; the variance update divides M2 by (n - 1), not n;
and the returns restart where `firsts` is set (the first step of each episode) and otherwise carry over from the
previous call.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor


class RunningRewardScaler:
    """Scale rewards by the running std of a discounted return.

    Args:
        n_envs: E.
        clip: scaled rewards are clipped to [-clip, clip].
        gamma: discount of the running return (the reference's fixed 0.99).
        epsilon: added to the variance before the square root.
    """

    def __init__(self, n_envs: int, clip: float = 10.0, gamma: float = 0.99, epsilon: float = 1e-8) -> None:
        self.n_envs = int(n_envs)
        self.clip = float(clip)
        self.gamma = float(gamma)
        self.epsilon = float(epsilon)
        self.ret = np.zeros(self.n_envs, dtype=np.float64)
        self.mean = 0.0
        self.var = 1.0
        self.count = 1e-4

    def _update_moments(self, batch: np.ndarray) -> None:
        b_mean, b_var, b_n = float(batch.mean()), float(batch.var()), batch.size
        delta = b_mean - self.mean
        total = self.count + b_n
        m2 = self.var * self.count + b_var * b_n + delta**2 * self.count * b_n / total
        self.mean = self.mean + delta * b_n / total
        self.var = m2 / (total - 1)  # reference: (n - 1), not n
        self.count = total

    def __call__(self, rewards: np.ndarray | Tensor, firsts: np.ndarray | Tensor) -> np.ndarray:
        """Update the statistics with one rollout and return the scaled rewards.

        Args:
            rewards: (E, S) raw rewards, env-major.
            firsts: (E, S) 1 where step t starts an episode.

        Returns:
            (E, S) float32 scaled rewards.
        """
        r = _numpy(rewards).astype(np.float64)
        f = _numpy(firsts).astype(np.float64)
        returns = np.empty_like(r)
        g = self.ret
        for t in range(r.shape[1]):
            g = r[:, t] + (1.0 - f[:, t]) * self.gamma * g
            returns[:, t] = g
        self.ret = g
        self._update_moments(returns.reshape(-1))
        scaled = r / np.sqrt(self.var + self.epsilon)
        return np.clip(scaled, -self.clip, self.clip).astype(np.float32)

    def state_dict(self) -> dict:
        return {"ret": self.ret.copy(), "mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        ret = _numpy(state["ret"]).astype(np.float64)
        if ret.shape != (self.n_envs,):
            raise ValueError(f"reward scaler state is for {ret.shape[0]} envs, this run has {self.n_envs}")
        self.ret = ret.copy()
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), float(state["count"])


def _numpy(x: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)
