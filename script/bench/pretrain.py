"""Pretraining throughput: samples/s end to end (data + step + EMA) and model-only, per config.

    python script/bench/pretrain.py [--device cpu] [--steps 200] [--configs hopper can] [--emulate-reference]

Uses the real configs (`cfg/gym/pretrain/hopper-medium-v2/pre_diffusion_mlp`, `cfg/robomimic/pretrain/can/
pre_diffusion_mlp`) and the real `PretrainAgent`, on a generated dataset of D4RL-like size. Reference figures on a
2-core CPU (DPPO, torch 2.13): hopper ~22k samples/s end to end, ~32k model-only; can ~26k / ~34k.

With `--emulate-reference`, the reference's way of running the same step is timed too, on this machine and
interleaved with this repo's runs (the CPU's speed drifts when it is shared): windows sliced one `__getitem__` at a
time and collated by a `DataLoader` with 4 workers (its default on CPU) and with 0, the single-tensor AdamW (torch's
default on CPU) and a per-parameter EMA loop; same model, loss and batch.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import logging
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from agent.config import CFG_ROOT, compose  # noqa: E402
from agent.dataset import StitchedSequenceDataset  # noqa: E402
from agent.pretrain import PretrainAgent  # noqa: E402
from script.bench.inputs import write_demos  # noqa: E402
from script.bench.timing import interleaved_rounds, paired  # noqa: E402

CONFIGS = {
    "hopper": ("gym/pretrain/hopper-medium-v2", "pre_diffusion_mlp", 22_000),
    "can": ("robomimic/pretrain/can", "pre_diffusion_mlp", 26_000),
}


class PerWindowDataset(torch.utils.data.Dataset):
    """The reference's loader input: one (actions (Ta, Da), states (To, Do)) window sliced per `__getitem__`."""

    def __init__(self, dataset: StitchedSequenceDataset) -> None:
        self.actions, self.states = dataset.actions, dataset.states
        self.starts, self.offsets = dataset._starts.tolist(), dataset._offsets.tolist()
        self.ta, self.to = dataset.horizon_steps, dataset.cond_steps

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        start, offset = self.starts[i], self.offsets[i]
        history = [start - min(back, offset) for back in range(self.to - 1, -1, -1)]
        return self.actions[start : start + self.ta], self.states[history]


class ReferenceStep:
    """The reference's pretraining step on a copy of the agent's model: loss, backward, single-tensor AdamW, and
    every 10 batches an EMA update written as a loop over parameters."""

    def __init__(self, agent: PretrainAgent) -> None:
        t = agent.cfg.train
        self.model = copy.deepcopy(agent.model)
        self.ema = [p.detach().clone() for p in self.model.parameters()]
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay)
        self.decay, self.n = float(agent.cfg.ema.decay), 0

    def __call__(self, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        actions, states = batch
        loss = self.model.loss(actions, {"state": states})
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        if self.n % 10 == 0:
            for e, p in zip(self.ema, self.model.parameters()):
                e.copy_(e * self.decay + (1 - self.decay) * p.detach())
        self.n += 1


def forever(passes: Callable[[], Iterable]) -> Iterator:
    """The batches of pass after pass of `passes()`, without end."""
    while True:
        yield from passes()


def measure(runs: dict, steps: int, batch_size: int, device: torch.device, repeats: int = 3) -> dict[str, np.ndarray]:
    """samples/s ``(repeats,)`` of each `name -> (step, batches)`: `steps` calls `step(next(batches))` per round, the
    runs in `interleaved_rounds` (compare two by `paired`)."""

    def run(step: Callable, batches: Iterator) -> Callable[[], None]:
        def steps_of() -> None:
            for _ in range(steps):
                step(next(batches))

        return steps_of

    times = interleaved_rounds({name: run(*r) for name, r in runs.items()}, repeats, device)
    return {name: steps * batch_size / t[:, 0] for name, t in times.items()}


def agent_runs(agent: PretrainAgent) -> dict:
    """This repo's end-to-end (tensor-gathered batches) and model-only (one fixed batch) runs."""
    bs = agent.cfg.train.batch_size
    fixed = agent.dataset.get_batch(torch.arange(bs, device=agent.device))
    epochs = forever(lambda: agent.dataset.iterate(bs, generator=agent.generator, drop_last=True))
    return {"e2e": (agent.train_step, epochs), "model": (agent.train_step, itertools.repeat(fixed))}


def reference_runs(agent: PretrainAgent) -> dict:
    """The reference's end-to-end runs with a DataLoader of 4 and of 0 workers (see the module docstring), and its
    step alone on one fixed batch. The workers persist across rounds (started in the warm-up round): a round
    measures the steady state that the reference's epochs of thousands of batches run in."""
    warnings.filterwarnings("ignore", message="This DataLoader will create")  # 4 workers on 2 cores: as DPPO
    bs, step = agent.cfg.train.batch_size, ReferenceStep(agent)
    data = PerWindowDataset(agent.dataset)
    workers = (4, 0) if agent.device.type == "cpu" else (0,)  # as DPPO: no workers when the data is on the GPU
    loader = torch.utils.data.DataLoader
    loaders = {
        w: loader(data, batch_size=bs, shuffle=True, num_workers=w, drop_last=True, persistent_workers=w > 0)
        for w in workers
    }
    runs = {f"ref{w}": (step, forever(lambda lo=lo: lo)) for w, lo in loaders.items()}
    runs["refmodel"] = (step, itertools.repeat(next(iter(loaders[0]))))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per timed run")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument(
        "--emulate-reference", action="store_true", help="also time the reference's loader and step, interleaved"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.disable(logging.INFO)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.configs:
            folder, name, reference = CONFIGS[key]
            probe = compose(CFG_ROOT / folder, name, ["wandb=null"])
            data, norm = write_demos(Path(tmp) / key, probe.obs_dim, probe.action_dim, n_traj=200, length=500)
            cfg = compose(
                CFG_ROOT / folder,
                name,
                [
                    f"device={args.device}",
                    "wandb=null",
                    f"train_dataset_path={data}",
                    f"normalization_path={norm}",
                    f"log_dir={tmp}/log",
                ],
            )
            agent = PretrainAgent(cfg)
            agent.epoch = cfg.train.epoch_start_ema  # measure the steady state (EMA lerp, not copy)
            runs = agent_runs(agent)
            if args.emulate_reference:
                runs.update(reference_runs(agent))
            rates = measure(runs, args.steps, cfg.train.batch_size, agent.device, args.repeats)
            rows.append((key, cfg.train.batch_size, str(agent.device), rates, reference))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    header = f"{'config':<8} {'batch':>5} {'device':<7} {'end-to-end/s':>13} {'model-only/s':>13} {'e2e/model':>9} "
    header += f"{'e2e vs ref':>10}"
    print(header)
    med = np.median
    for key, bs, dev, rates, ref in rows:
        e2e, mo = med(rates["e2e"]), med(rates["model"])
        line = f"{key:<8} {bs:>5} {dev:<7} {e2e:>13,.0f} {mo:>13,.0f}"
        print(f"{line} {paired(rates['e2e'], rates['model']):>9.2f} {e2e / ref:>9.2f}x")
    if args.emulate_reference:
        print("\nsame machine, interleaved: the reference's loader and step emulated (end to end, samples/s)")
        print("(reference figures: hopper 22k / 27k / 32k, can 26k / - / 34k; ratios: medians of per-round ratios)")
        head = f"{'config':<8} {'4 workers':>10} {'0 workers':>10} {'model-only':>10} {'this repo':>10}"
        print(f"{head} {'vs 4 workers':>12} {'vs 0':>6} {'vs model-only':>13}")
        for key, _, _, rates, _ in rows:
            ours, r0, rm = rates["e2e"], rates["ref0"], rates["refmodel"]
            r4 = rates.get("ref4", np.full_like(ours, np.nan))
            line = f"{key:<8} {med(r4):>10,.0f} {med(r0):>10,.0f} {med(rm):>10,.0f} {med(ours):>10,.0f}"
            print(f"{line} {paired(ours, r4):>11.2f}x {paired(ours, r0):>5.2f}x {paired(ours, rm):>12.2f}x")


if __name__ == "__main__":
    main()
