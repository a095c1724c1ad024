"""Make D4RL-style "medium" locomotion data offline: train a behaviour policy with the toolkit's own PPO, stop it
in the medium return band, and record its (stochastic) rollouts.

    python script/dataset/generate_locomotion.py --task hopper-medium-v2
    python script/dataset/generate_locomotion.py --task walker2d-medium-v2 --band 1000 2500 --transitions 200000

1. PPO on a Gaussian MLP from scratch (`cfg/gym/scratch/<task>-v2/ppo_gaussian_mlp`), evaluated every
   `--eval-every` iterations; training stops at the first evaluation whose mean return lies in `--band` (D4RL's
   medium policies reach about a third of expert return: hopper roughly 1000-2000). If the band is never reached
   the run ends after `--max-itr` iterations and the data are recorded anyway, with a warning; `--resume
   --max-itr <more>` then continues that behaviour run from its last checkpoint.
2. The policy collects at least `--transitions` steps; only finished episodes are kept (falls, or the 1000-step
   time limit). Actions are the policy's mean plus Gaussian noise of `--record-std` (0.1 in normalised action
   units), like D4RL's SAC behaviour policies whose learned noise is small; PPO's own exploration std (0.3-0.5
   while it learns) would put the recorded returns far below the band the deterministic evaluation reached.
   `--record-std -1` samples the PPO policy itself. The recorded mean return is checked against the band.
3. `train.npz` + `normalization.npz` go to `$DPPO_DATA_DIR/gym/<task>/` (docs/algorithms.md#dataset-files), with
   `rewards`, `terminals` and `episode_returns.npy` beside them; the behaviour policy's run folder is
   `$DPPO_LOG_DIR/gym-behaviour/<task>/` (its checkpoint of the stopping iteration in `behaviour/checkpoint/`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from agent.config import CFG_ROOT, compose  # noqa: E402
from agent.finetune.ppo import PPOAgent  # noqa: E402
from agent.rollout import actions_to_numpy, obs_to_tensor  # noqa: E402
from script.dataset.common import denormalize, log_dir, task_dir, write_dataset  # noqa: E402

log = logging.getLogger("generate_locomotion")

TASKS = {
    "hopper-medium-v2": (1000.0, 2000.0),
    "walker2d-medium-v2": (1000.0, 2500.0),
    "halfcheetah-medium-v2": (2500.0, 5000.0),
}
OBS_RANGE = 10.0  # fixed [-10, 10] observation scaling while the behaviour policy trains (velocities stay inside)


class InBandError(Exception):
    """Raised by the evaluation hook to end training (the loop's `finally` closes envs and the logger)."""


class BandStopPPO(PPOAgent):
    """PPO that stops training at the first evaluation whose mean return lies inside `band`."""

    progress_label = "behaviour PPO"
    band: tuple[float, float] = (-np.inf, np.inf)
    last_eval_return: float = float("nan")

    def _log_eval(self) -> None:
        result = self.evaluate()
        self.logger.log({f"eval/{k}": v for k, v in result.items()}, step=self.itr)
        self.last_eval_return = float(result.get("episode_return", float("nan")))
        if self.band[0] <= self.last_eval_return <= self.band[1]:
            log.info(
                "eval return %.1f is in the band %s at iteration %d: stop", self.last_eval_return, self.band, self.itr
            )
            self.save()  # the behaviour policy that records the data
            raise InBandError


def train_behaviour_policy(
    task: str, band: tuple[float, float], args: argparse.Namespace, workdir: Path
) -> BandStopPPO:
    """Train PPO-Gaussian from scratch until its evaluation return enters `band` (or `max_itr` runs out)."""
    probe = compose(CFG_ROOT / f"gym/scratch/{task.replace('-medium', '')}", "ppo_gaussian_mlp", ["wandb=null"])
    workdir.mkdir(parents=True, exist_ok=True)
    norm = workdir / "behaviour_normalization.npz"
    np.savez(
        norm,
        obs_min=np.full(probe.obs_dim, -OBS_RANGE, np.float32),
        obs_max=np.full(probe.obs_dim, OBS_RANGE, np.float32),
        action_min=-np.ones(probe.action_dim, np.float32),
        action_max=np.ones(probe.action_dim, np.float32),
    )
    overrides = [
        "wandb=null",
        f"device={args.device}",
        f"seed={args.seed}",
        f"normalization_path={norm}",
        f"logdir={workdir / 'behaviour'}",
        f"env.n_envs={args.n_envs}",
        f"train.n_steps={args.n_steps}",
        f"train.n_train_itr={args.max_itr}",
        f"train.val_freq={args.eval_every}",
        f"train.save_model_freq={args.max_itr}",
        f"train.batch_size={min(5000, args.n_envs * args.n_steps)}",
    ]
    if args.resume:  # continue the newest behaviour run of this task from its last checkpoint
        overrides.append("resume=true")
    cfg = compose(CFG_ROOT / f"gym/scratch/{task.replace('-medium', '')}", "ppo_gaussian_mlp", overrides)
    agent = BandStopPPO(cfg)
    agent.band = band
    with contextlib.suppress(InBandError):
        agent.run()
    if not band[0] <= agent.last_eval_return <= band[1]:
        log.warning("the behaviour policy ended at return %.1f, outside the band %s", agent.last_eval_return, band)
    return agent


@torch.no_grad()
def record(agent: BandStopPPO, n_transitions: int, seed: int, record_std: float = 0.1) -> dict[str, np.ndarray]:
    """Roll out the policy (mean + N(0, record_std^2) noise; record_std < 0: the PPO policy's own sampling) and
    return raw states/actions/rewards/terminals of finished episodes."""
    from agent.rollout import make_env

    env = make_env(agent.exp.env, agent.logdir, None, seed)
    agent.policy.eval()
    norm = agent.normalization
    n_envs = env.num_envs
    live: list[dict[str, list]] = [{"s": [], "a": [], "r": []} for _ in range(n_envs)]
    episodes: list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]] = []
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    total = 0
    while total < n_transitions:
        sample = agent.policy.sample(obs_to_tensor(obs, agent.device), deterministic=record_std >= 0)
        action = actions_to_numpy(sample.actions, 1)  # (E, 1, Da)
        if record_std > 0:
            action = action + rng.normal(0.0, record_std, action.shape).astype(np.float32)
        action = np.clip(action, -1.0, 1.0)  # what the env executes
        state = obs["state"][:, -1]
        obs, reward, terminated, truncated, _ = env.step(action)
        for i in range(n_envs):
            live[i]["s"].append(state[i])
            live[i]["a"].append(action[i, 0])
            live[i]["r"].append(reward[i])
            if terminated[i] or truncated[i]:
                ep = live[i]
                episodes.append((np.array(ep["s"]), np.array(ep["a"]), np.array(ep["r"]), bool(terminated[i])))
                total += len(ep["s"])
                live[i] = {"s": [], "a": [], "r": []}
    env.close()
    states = denormalize(np.concatenate([e[0] for e in episodes]), norm["obs_min"], norm["obs_max"])
    actions = denormalize(np.concatenate([e[1] for e in episodes]), norm["action_min"], norm["action_max"])
    terminals = np.concatenate([np.eye(1, len(e[0]), len(e[0]) - 1, dtype=bool)[0] & e[3] for e in episodes])
    return {
        "states": states,
        "actions": actions,
        "rewards": np.concatenate([e[2] for e in episodes]),
        "terminals": terminals,
        "traj_lengths": np.array([len(e[0]) for e in episodes]),
        "episode_returns": np.array([e[2].sum() for e in episodes]),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, choices=sorted(TASKS))
    parser.add_argument("--band", type=float, nargs=2, default=None, help="eval-return band to stop training in")
    parser.add_argument("--transitions", type=int, default=100_000)
    parser.add_argument("--max-itr", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--n-envs", type=int, default=10)
    parser.add_argument("--n-steps", type=int, default=500, help="chunks per env per PPO iteration")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--record-std", type=float, default=0.1, help="action noise while recording (-1: the PPO policy's own)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the newest behaviour run of the task (e.g. one that ended outside the band) up to --max-itr",
    )
    parser.add_argument("--data-dir", default=None, help="default: $DPPO_DATA_DIR or data/")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(levelname)s] %(message)s", datefmt="%H:%M:%S")
    band = tuple(args.band) if args.band else TASKS[args.task]
    out = task_dir("gym", args.task, args.data_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    agent = train_behaviour_policy(args.task, band, args, log_dir() / "gym-behaviour" / args.task)
    train_s = time.perf_counter() - start
    data = record(agent, args.transitions, args.seed + 1, args.record_std)
    returns = data.pop("episode_returns")
    if not band[0] <= returns.mean() <= band[1]:
        log.warning("the recorded episodes' mean return %.1f is outside the band %s", returns.mean(), band)
    summary = write_dataset(out, **data)
    np.save(out / "episode_returns.npy", returns)
    stats = {
        "task": args.task,
        "behaviour_eval_return": agent.last_eval_return,
        "behaviour_itr": agent.itr,
        "episodes": len(returns),
        "transitions": int(data["traj_lengths"].sum()),
        "return_mean": float(returns.mean()),
        "return_min": float(returns.min()),
        "return_max": float(returns.max()),
        "record_std": args.record_std,
        "train_s": round(train_s, 1),
        "total_s": round(time.perf_counter() - start, 1),
        "bytes": sum(summary.file_bytes.values()),
    }
    (out / "generation.json").write_text(json.dumps(stats, indent=2))
    print(json.dumps(stats))
    return stats


if __name__ == "__main__":
    main()
