"""DPPO fine-tuning throughput on the hopper shapes (40 envs, K=20, K'=10, MLP 512x3) with the real config and agent.

    python script/bench/finetune.py [--device cpu] [--threads 1] [--steps 50] [--full] [--emulate-reference]

Measures, with the real `cfg/gym/finetune/hopper-v2/ft_ppo_diffusion_mlp` config, `PPOAgent` and hopper vector env
(from a generated, untrained base checkpoint: throughput does not depend on the weights):

* raw vector-env steps/s (40 sync envs in this process, 4 steps per chunk, random actions: the env benchmark's
  figure) and rollout env steps/s (sampling with chains + env + buffer writes, `PPOAgent.collect`) with the
  config's env (`env.pipeline: true`: a worker process steps one half of the envs while the policy samples the
  other's chunks) and with the plain sync env, timed in interleaved rounds (rollout / raw: the median of the
  per-round ratios);
* policy chunk queries/s: `sample(40 conditions, return_chain=True)`;
* the old-log-prob pass and the PPO update in (env step x denoising step) rows/s: forward + backward + AdamW steps
  on minibatches of `--batch` rows (50,000, the paper's);
* one full iteration at the paper's settings (500 steps per env, 200,000 rows, 5 epochs = 20 minibatches):
  extrapolated from the measured rates, or measured with `--full`;
* the flow policy beside it (unless `--no-flow`): one training iteration (rollout + update) of
  `ft_ppo_reflow_mlp` (K = K' = 4) and of `ft_ppo_diffusion_mlp` (K = 20, K' = 10), each at its config's shapes
  (40 envs, `--flow-steps` chunks per env, so the same env steps; minibatches scaled so each epoch has the paper's
  4), timed in interleaved rounds; the ratio is the median of the per-round ratios;
* with `--emulate-reference`, the same three measurements with the reference's known extra work (the
  frozen net also run on fine-tuned steps, two actor passes per scored row, a critic pass per row, a Python loop
  over the minibatch) added on top of this code and timed in the same interleaved rounds, for a same-machine
  comparison when the reference's figures come from another (or an idle) machine.

Reference figures (DPPO on a 2-core CPU, torch 2.13): ~3.0k chunks/s sampling, ~22k rows/s update, ~73k rows/s
old-log-prob pass, about a minute per hopper iteration.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from omegaconf import OmegaConf  # noqa: E402

from agent.checkpoint import save_checkpoint  # noqa: E402
from agent.config import CFG_ROOT, compose, instantiate  # noqa: E402
from agent.rollout import make_env  # noqa: E402
from env.pipeline import PipelinedVectorEnv  # noqa: E402
from script.bench.inputs import unit_stats, write_normalization  # noqa: E402
from script.bench.timing import Clock, interleaved_rounds, paired  # noqa: E402

FT_DIR, FT_NAME = CFG_ROOT / "gym/finetune/hopper-v2", "ft_ppo_diffusion_mlp"
FLOW_NAME, FLOW_PRE_NAME = "ft_ppo_reflow_mlp", "pre_reflow_mlp"
PRE_DIR, PRE_NAME = CFG_ROOT / "gym/pretrain/hopper-medium-v2", "pre_diffusion_mlp"
REFERENCE = {"chunks": 3000.0, "update": 22000.0, "logprob": 73000.0, "iteration_s": 60.0}


def write_base_checkpoint(
    folder: Path, pre_dir: Path = PRE_DIR, pre_name: str = PRE_NAME, overrides: tuple[str, ...] = ()
) -> Path:
    """An untrained pretraining checkpoint of `pre_dir/pre_name` ([-1, 1] normalization ranges, as
    `script.bench.inputs.write_normalization` writes them): throughput does not depend on the weights."""
    pre = compose(pre_dir, pre_name, ["wandb=null", *overrides])
    OmegaConf.resolve(pre)
    sd = instantiate(pre.model, "model").state_dict()
    norm = vars(unit_stats(int(pre.obs_dim), int(pre.action_dim)))
    payload = {"kind": "pretrain", "model": sd, "ema": sd, "config": OmegaConf.to_container(pre), "normalization": norm}
    return save_checkpoint(folder / "checkpoint" / "state_1.pt", payload)


def family_iterations(tmp: Path, device: str, steps: int, repeats: int) -> dict[str, np.ndarray]:
    """(wall, cpu) seconds ``(repeats, 2)`` of one training iteration (rollout + GAE + PPO update, no KL stop) of the
    diffusion and the reflow hopper configs, from untrained base checkpoints, `steps` chunks per env each, with
    minibatches of a quarter of the rollout's rows (the paper's 4 per epoch)."""
    from agent.finetune.ppo import PPOAgent

    norm = write_normalization(tmp / "data", 11, 3)
    agents = {}
    for label, ft_name, pre_name, k_ft in (
        ("diffusion", FT_NAME, PRE_NAME, 10),
        ("reflow", FLOW_NAME, FLOW_PRE_NAME, 4),
    ):
        base = write_base_checkpoint(tmp / f"pre_{label}", PRE_DIR, pre_name)
        overrides = [
            f"device={device}",
            "wandb=null",
            f"log_dir={tmp}/log_{label}",
            f"base_policy_path={base}",
            f"normalization_path={norm}",
            f"train.n_steps={steps}",
            f"train.batch_size={steps * 40 * k_ft // 4}",
            "train.target_kl=null",
        ]
        agents[label] = PPOAgent(compose(FT_DIR, ft_name, overrides))
    try:
        return interleaved_rounds(
            {label: agent.train_iteration for label, agent in agents.items()}, repeats, agents["reflow"].device
        )
    finally:
        for agent in agents.values():
            agent.env.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--steps", type=int, default=50, help="rollout steps per env for the rollout measurement")
    parser.add_argument("--batch", type=int, default=50000, help="rows per PPO minibatch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full", action="store_true", help="also run one full paper-size iteration")
    parser.add_argument(
        "--emulate-reference", action="store_true", help="also time the reference's extra work, emulated here"
    )
    parser.add_argument("--no-flow", action="store_true", help="skip the flow-vs-diffusion iteration comparison")
    parser.add_argument("--flow-steps", type=int, default=100, help="chunks per env in that comparison")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.disable(logging.INFO)
    from agent.finetune.ppo import PPOAgent

    with tempfile.TemporaryDirectory() as tmp:
        base = write_base_checkpoint(Path(tmp) / "pre")
        norm = write_normalization(Path(tmp) / "data", 11, 3)  # hopper's dims, the checkpoint's ranges
        rows_needed = -(-args.batch // (40 * 10))  # steps per env so that one rollout holds a full minibatch
        overrides = [
            f"device={args.device}",
            "wandb=null",
            f"log_dir={tmp}/log",
            f"base_policy_path={base}",
            f"normalization_path={norm}",
            f"train.n_steps={max(args.steps, rows_needed)}",
            f"train.batch_size={args.batch}",
        ]
        agent = PPOAgent(compose(FT_DIR, FT_NAME, overrides))
        device, env, policy, ppo = agent.device, agent.env, agent.policy, agent.algorithm
        n_envs, te = agent.n_envs, agent.act_steps

        # machine calibration: float32 matmul throughput now (the CPU may be shared with other jobs)
        a, w = torch.randn(20000, 512, device=device), torch.randn(512, 512, device=device)
        t_mm = np.median(interleaved_rounds({"mm": lambda: a @ w}, 5, device)["mm"], axis=0)
        gflops = tuple(2 * 20000 * 512 * 512 / t / 1e9 for t in t_mm)

        # the plain in-process sync env (the env benchmark's "raw vector env"), whatever env.pipeline says
        plain_env = replace(agent.exp.env, pipeline=False)
        pipelined_env, env = env, make_env(plain_env, agent.logdir, None, agent.seed)

        # Same-machine comparison with the reference's known non-mathematical costs,
        # emulated on top of this repo's code and timed in the same rounds: sampling runs the frozen net as well on
        # the K' fine-tuned steps (30 passes instead of 20); scoring runs the frozen net too (two actor passes per
        # row); the update also evaluates the critic once per row and builds the denoising discounts with a Python
        # loop over the rows.
        net, k_ft = policy.network, policy.n_chain_steps

        def rates(work: float, ours, reference, repeats: int) -> tuple[tuple[float, float], float | None]:
            """(wall, cpu) rates of `work` units per call of `ours` (medians over rounds) and, with
            --emulate-reference, its speed-up over `reference`: the median of the per-round cpu-time ratios."""
            fns = {"ours": ours, "ref": reference} if args.emulate_reference else {"ours": ours}
            times = interleaved_rounds(fns, repeats, device)
            rate = tuple(work / t for t in np.median(times["ours"], axis=0))
            return rate, paired(times["ref"][:, 1], times["ours"][:, 1]) if "ref" in times else None

        # policy chunk queries (40 conditions, with chains, no grad)
        cond = {"state": torch.rand(n_envs, 1, 11, device=device) * 2 - 1}

        def ref_sample() -> None:
            policy.sample(cond, return_chain=True)
            x, t = torch.zeros(n_envs, 4, 3, device=device), torch.zeros(n_envs, dtype=torch.long, device=device)
            for _ in range(k_ft):
                net(x, t, cond)

        with torch.no_grad():
            chunk_rate, e_sample = rates(n_envs, lambda: policy.sample(cond, return_chain=True), ref_sample, 20)

        # Raw vector env (random actions) and rollouts through the agent (sampling + env + buffer) with the config's
        # env and with the plain one, in interleaved rounds; rollout / raw is the median of the per-round ratios.
        raw_env = make_env(plain_env, agent.logdir, None, agent.seed)
        raw_env.reset(seed=0)
        actions = np.random.default_rng(0).uniform(-1, 1, (args.steps, n_envs, te, 3)).astype(np.float32)
        agent.n_steps = args.steps
        rollout_envs, last_obs = {"config": pipelined_env, "plain": env}, {}
        env_steps: dict[str, list[int]] = {"raw": [], "config": [], "plain": []}

        def raw_run() -> None:
            env_steps["raw"].append(sum(int(raw_env.step(a)[4]["chunk_steps"].sum()) for a in actions))

        def rollout_run(label: str) -> None:
            agent.env, agent._obs = rollout_envs[label], last_obs.get(label)  # None: collect() resets first
            env_steps[label].append(agent.collect()["rollout_env_steps"])
            last_obs[label] = agent._obs

        runs = {"raw": raw_run, "config": lambda: rollout_run("config"), "plain": lambda: rollout_run("plain")}
        env_times = interleaved_rounds(runs, args.repeats, device)
        env_rates = {name: np.array(env_steps[name][1:])[:, None] / env_times[name] for name in runs}  # (rounds, 2)
        raw_rate, rollout_rate, plain_rate = (tuple(np.median(env_rates[k], axis=0)) for k in runs)
        rollout_over_raw = paired(env_rates["config"][:, 0], env_rates["raw"][:, 0])
        raw_env.close()
        agent.env, agent._obs = pipelined_env, None
        agent.n_steps = agent.buffer.n_steps
        agent.collect()
        agent.compute_values()
        agent.buffer.compute_advantages(agent.gamma, agent.gae_lambda, agent.scaled_rewards())
        buf = agent.buffer
        pairs = buf.n_rows * policy.n_chain_steps

        # old-log-prob pass
        def ref_logprob() -> None:
            ppo.old_log_probs(buf, ppo.cfg.logprob_batch_size)
            obs, chains = buf.flat_obs(), buf.chains.view(buf.n_rows, k_ft + 1, 4, 3)
            for lo in range(0, buf.n_rows, ppo.cfg.logprob_batch_size):
                hi = min(lo + ppo.cfg.logprob_batch_size, buf.n_rows)
                x = chains[lo:hi, :-1].reshape(-1, 4, 3)
                st = obs["state"][lo:hi].repeat_interleave(k_ft, 0)
                net(x, torch.zeros(len(x), dtype=torch.long, device=device), {"state": st})

        with torch.no_grad():
            logprob_rate, e_lp = rates(
                pairs, lambda: ppo.old_log_probs(buf, ppo.cfg.logprob_batch_size), ref_logprob, args.repeats
            )
        ppo.old_log_probs(buf, ppo.cfg.logprob_batch_size)
        old = buf.log_probs.view(buf.n_rows, -1)

        # update minibatches: forward + backward + AdamW (actor and critic)
        policy.train()

        def one_minibatch() -> None:
            mb = next(ppo.minibatches(buf, old))
            for opt in ppo.optimizers.values():
                opt.zero_grad(set_to_none=True)
            ppo.backward(mb)
            ppo.optimizers["actor"].step()
            ppo.optimizers["critic"].step()

        def ref_minibatch() -> None:
            mb = next(ppo.minibatches(buf, old))
            mb = mb._replace(critic_cond=None, critic_index=None)
            rows = torch.arange(len(mb.step), device=device)
            net(mb.chains[rows, mb.step], mb.step, mb.cond)
            weights = torch.empty(len(mb.step))
            for i, k in enumerate(mb.step.tolist()):  # the reference's per-row loop
                weights[i] = ppo.cfg.gamma_denoising ** (k_ft - k - 1)
            loss, _ = ppo.loss(mb)
            for opt in ppo.optimizers.values():
                opt.zero_grad(set_to_none=True)
            loss.backward()
            ppo.optimizers["actor"].step()
            ppo.optimizers["critic"].step()

        update_rate, e_mb = rates(args.batch, one_minibatch, ref_minibatch, args.repeats)
        emulated = (e_sample, e_lp, e_mb) if args.emulate_reference else None

        # one paper-size iteration: 500 steps x 40 envs (80k env steps), 200k rows, 5 epochs of 4 minibatches
        paper_rows, paper_steps = 500 * 40 * 10, 500 * 40 * te
        extrapolated = tuple(
            paper_steps / r + paper_rows / lp + 5 * 4 * args.batch / u
            for r, lp, u in zip(rollout_rate, logprob_rate, update_rate)
        )
        measured = None
        if args.full:
            full = PPOAgent(compose(FT_DIR, FT_NAME, [*overrides[:5], "train.target_kl=null"]))
            with Clock() as c:
                full.train_iteration()
            measured = (c.wall, c.cpu)
            full.env.close()
        env.close()
        pipelined = isinstance(pipelined_env, PipelinedVectorEnv)
        pipelined_env.close()
        families = None if args.no_flow else family_iterations(Path(tmp), args.device, args.flow_steps, args.repeats)

    threads = torch.get_num_threads()
    print(f"\nDPPO fine-tuning, hopper shapes (E=40, K=20, K'=10, MLP 512x3), device {device}, {threads} torch threads")
    print("rates per wall-clock second, and per process CPU second (= idle-core wall time when single-threaded)")
    print(f"{'measure':50s} {'wall':>10s} {'cpu':>10s} {'reference':>10s} {'wall/ref':>8s}")

    def row(name: str, value: tuple[float, float], ref: float | None, digits: int = 0) -> None:
        ref_s, ratio = (f"{ref:,.0f}", f"{value[0] / ref:.2f}x") if ref else ("-", "")
        print(f"{name:50s} {value[0]:>10,.{digits}f} {value[1]:>10,.{digits}f} {ref_s:>10s} {ratio:>8s}")

    row("calibration: float32 matmul GFLOP/s", gflops, None)
    row("raw vector env, env steps/s", raw_rate, None)
    kind = "pipelined" if pipelined else "sync"
    row(f"rollout (sample+env+buffer), env steps/s, {kind}", rollout_rate, None)
    if pipelined:
        row("  the same with env.pipeline=false", plain_rate, None)
    print(f"{'rollout / raw vector env (goal >= 0.7; paired rounds)':50s} {rollout_over_raw:>10.2f}")
    row("policy chunk queries/s (40 conditions, chains)", chunk_rate, REFERENCE["chunks"])
    row("old-log-prob pass, rows/s", logprob_rate, REFERENCE["logprob"])
    row(f"PPO update, rows/s ({args.batch:,}-row minibatches)", update_rate, REFERENCE["update"])
    ref_it = REFERENCE["iteration_s"]
    name = "one paper iteration, s (extrapolated)"
    print(
        f"{name:50s} {extrapolated[0]:>10.1f} {extrapolated[1]:>10.1f} {ref_it:>10.0f} "
        f"{ref_it / extrapolated[0]:>7.2f}x"
    )
    if measured is not None:
        name = "one paper iteration, s (measured, --full)"
        print(f"{name:50s} {measured[0]:>10.1f} {measured[1]:>10.1f} {ref_it:>10.0f} {ref_it / measured[0]:>7.2f}x")
    if emulated is not None:
        print("\nsame machine, interleaved: this repo vs the reference's extra work emulated on top of it (cpu rates)")
        names = ("policy chunk queries/s", "old-log-prob pass, rows/s", "PPO update, rows/s")
        ours = (chunk_rate, logprob_rate, update_rate)
        for name, mine, speedup in zip(names, ours, emulated):
            print(f"{name:50s} {mine[1]:>10,.0f} {mine[1] / speedup:>10,.0f} (emulated) {speedup:>6.2f}x")
        print("(the last column: the median over rounds of the emulated / this repo's time in the same round)")
    print(
        "(iteration: 80k env steps, 200k rows old-log-prob pass, 5 epochs x 4 minibatches of 50k rows; "
        "for the iteration the last column is reference / this repo, i.e. the speed-up)"
    )
    if families is not None:
        ratio = paired(families["reflow"][:, 0], families["diffusion"][:, 0])
        steps = args.flow_steps * 40 * te
        print(f"\nflow beside diffusion: one training iteration at each config's shapes, {steps:,} env steps each")
        row("  diffusion (ft_ppo_diffusion_mlp, K=20, K'=10), s", tuple(np.median(families["diffusion"], 0)), None, 2)
        row("  reflow (ft_ppo_reflow_mlp, K=K'=4), s", tuple(np.median(families["reflow"], 0)), None, 2)
        print(f"{'  reflow / diffusion (goal <= 0.3; paired rounds)':50s} {ratio:>10.2f}")


if __name__ == "__main__":
    main()
