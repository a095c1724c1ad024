"""Sweep several configs of one task folder together with any Hydra sweep of overrides, in one Hydra multirun.

    python script/sweep.py --config-dir=cfg/gym/finetune/hopper-v2 \
        --config-name=ft_ppo_diffusion_mlp,ft_dql_diffusion_mlp seed=0,1,2
    python script/plot/plot_runs.py --sweep <root printed at the end> --metric eval/episode_return

Hydra's `--config-name` takes a single name (`a,b` is looked up as a file called "a,b.yaml"). Seen from its parent
folder, the configs of a task folder are the options of a config group named after the folder, so the sweep above
is exactly

    python script/run.py -m --config-dir=cfg/gym/finetune \
        '+hopper-v2@_global_=ft_ppo_diffusion_mlp,ft_dql_diffusion_mlp' seed=0,1,2

as long as every plain override is written `++key=value`: Hydra applies the non-sweep overrides once before
composing any job, to a config in which the swept group is still empty, so `key=value` fails there with "Key 'key'
is not in struct". This script runs that command (in this process, through script/run.py) and

* first composes every named config with the overrides (sweeps at their first value), so a wrong key is one line
  with a suggestion, as with script/run.py; then writes the plain ones as `++key=value` (a config group choice
  such as `encoder=resnet` as the one-value sweep `encoder=choice(resnet)`);
* puts the sweep's runs under one root: `logdir=<root>/${name}/seed${seed}_job${hydra:job.num}` (each combination
  its own run folder) and `hydra.sweep.dir=<root>/hydra`.

Sweeps of other keys (`train.actor_lr=1e-4,1e-5`) and launchers pass through, e.g. `hydra/launcher=joblib
hydra.launcher.n_jobs=4` for local parallel runs or `hydra/launcher=submitit_slurm hydra.launcher.partition=<p>
hydra.launcher.timeout_min=600 hydra.launcher.gpus_per_node=1` for SLURM (see script/SWEEPS.md).
"""

from __future__ import annotations

import argparse
import os
import runpy
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # allow running from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))


def prepare_overrides(config_dir: str, config_names: list[str], overrides: list[str]) -> list[str]:
    """Check `overrides` against every config, then write the plain `key=value` ones as `++key=value`.

    Raises:
        UserError: a key that is not in one of the configs (one line, with a suggestion).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from agent.config import check_overrides, config_group_options

    parser = OverridesParser.create()
    checked, out = [], []
    for text in overrides:
        override = parser.parse_overrides([text])[0]
        if override.is_hydra_override():
            out.append(text)
            continue
        if override.is_sweep_override():
            first = next(iter(override.sweep_string_iterator()), None)
            if first is not None:
                checked.append(f"{override.get_key_element()}={first}")
            out.append(text)
            continue
        checked.append(text)
        plain = not (override.is_add() or override.is_force_add() or override.is_delete())
        if plain and config_group_options(config_dir, override.get_key_element()) is not None:
            # a config group choice (`encoder=resnet`): `++` is refused for groups, and outside a sweep Hydra
            # applies it to the still empty config; a one-value sweep applies it to each job instead
            out.append(f"{override.get_key_element()}=choice({override.get_value_element_as_str()})")
            continue
        out.append(f"++{text}" if plain else text)
    for name in config_names:
        check_overrides(config_dir, name, checked)
    return out


def hydra_argv(config_dir: str, config_names: list[str], root: Path, overrides: list[str]) -> list[str]:
    """The `script/run.py -m` arguments equivalent to sweeping `config_names` of `config_dir`.

    Args:
        config_dir: the task folder, e.g. cfg/gym/finetune/hopper-v2.
        config_names: config names in it (without .yaml).
        root: folder for the sweep's run folders.
        overrides: further Hydra arguments (overrides already prepared, sweeps, launcher settings).
    """
    folder = Path(config_dir)
    missing = [n for n in config_names if not (folder / f"{n}.yaml").is_file()]
    if missing:
        available = ", ".join(sorted(p.stem for p in folder.glob("*.yaml"))) or "none"
        raise SystemExit(f"error: no {', '.join(missing)} in {config_dir} (available: {available})")
    group = folder.resolve().name
    return [
        "-m",
        f"--config-dir={folder.resolve().parent}",
        f"+{group}@_global_={','.join(config_names)}",
        f"hydra.sweep.dir={root / 'hydra'}",
        f"++logdir={root}/${{name}}/seed${{seed}}_job${{hydra:job.num}}",
        *overrides,
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("--config-dir", "-cd", required=True, help="task folder, e.g. cfg/gym/finetune/hopper-v2")
    parser.add_argument("--config-name", "-cn", required=True, help="comma-separated config names in it")
    parser.add_argument("--root", type=Path, default=None, help="sweep folder (default: $DPPO_LOG_DIR/sweeps/<time>)")
    parser.add_argument("--dry-run", action="store_true", help="print the Hydra command instead of running it")
    args, rest = parser.parse_known_args(argv)
    names = [n.strip().removesuffix(".yaml") for n in args.config_name.split(",") if n.strip()]
    root = args.root or Path(os.environ.get("DPPO_LOG_DIR", "log")) / "sweeps" / time.strftime("%Y-%m-%d_%H-%M-%S")
    from agent.errors import UserError

    try:
        overrides = prepare_overrides(args.config_dir, names, rest)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    hydra_args = hydra_argv(args.config_dir, names, root.resolve(), overrides)
    if args.dry_run:
        print(shlex.join([sys.executable, str(REPO / "script/run.py"), *hydra_args]))
        return 0
    saved = sys.argv
    sys.argv = [str(REPO / "script/run.py"), *hydra_args]
    try:
        runpy.run_path(str(REPO / "script/run.py"), run_name="__main__")
    except SystemExit as exc:  # Hydra and run.py exit on errors
        if exc.code not in (None, 0):
            return int(exc.code) if isinstance(exc.code, int) else 1
    finally:
        sys.argv = saved
    print(f"runs in {root.resolve()}; compare them with:")
    print(f"  python script/plot/plot_runs.py --sweep {root.resolve()} --metric eval/episode_return")
    return 0


if __name__ == "__main__":
    sys.exit(main())
