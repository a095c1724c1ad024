"""Environment layer: one factory (`make_vec_env`), shared wrappers, one module per suite.

    from env import make_vec_env
    venv = make_vec_env(cfg.env, seed=cfg.seed, env_meta_path=cfg.get("robomimic_env_cfg_path"))
    obs, _ = venv.reset()                      # obs["state"]: (E, To, Do) float32
    obs, reward, terminated, truncated, info = venv.step(actions)   # actions: (E, Te, Da) in [-1, 1]

See env/factory.py for the config keys and env/vector.py for the step outputs.
"""

from env.factory import EnvConfig, make_vec_env, vectorize
from env.registry import (
    EnvConfigError,
    EnvSpec,
    MissingDependencyError,
    known_env_names,
    known_wrappers,
    register_suite,
    register_wrapper,
)
from env.vector import ChunkedVectorEnv, EnvWorkerError
from env.wrappers import MultiStep, Normalization, SubEnvError

__all__ = [
    "ChunkedVectorEnv",
    "EnvConfig",
    "EnvConfigError",
    "EnvSpec",
    "EnvWorkerError",
    "MissingDependencyError",
    "MultiStep",
    "Normalization",
    "SubEnvError",
    "known_env_names",
    "known_wrappers",
    "make_vec_env",
    "register_suite",
    "register_wrapper",
    "vectorize",
]
