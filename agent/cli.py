"""The command line: compose a config, check it, build the agent it names (`_target_`) and run it.

    dppo-run --config-name=pre_diffusion_mlp --config-dir=cfg/gym/pretrain/hopper-medium-v2 \
        train.n_epochs=10 device=cpu wandb=null
    dppo-run -m --config-name=... --config-dir=... seed=0,1,2

`python script/run.py ...` (from a checkout) is the same command. `--config-dir=cfg/...` is read against the
working directory when it holds that folder, and against the configs installed with the package otherwise.
Problems the user can fix (a wrong key or value, a missing file, CUDA asked for on a CPU machine) end the run with
one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from agent.config import CFG_ROOT, register_resolvers, register_search_path
from agent.dppo_keys import translate_dppo_overrides
from agent.errors import UserError


def run_config(cfg: DictConfig) -> None:
    """Build the agent named by `cfg._target_` with the config and run it."""
    from hydra.utils import get_class

    from agent.errors import ConfigError

    target = cfg.get("_target_")
    if not target:
        raise ConfigError("the config has no top-level `_target_` naming the agent class to run")
    try:
        agent_cls = get_class(target)
    except Exception as exc:
        raise ConfigError(f"_target_={target} cannot be imported ({exc})") from exc
    agent = agent_cls(cfg)
    try:
        agent.run()
    except KeyboardInterrupt as exc:
        from agent.checkpoint import Terminated, latest_checkpoint

        what = "terminated" if isinstance(exc, Terminated) else "interrupted"
        last = latest_checkpoint(agent.logdir)
        if last is None:
            print(f"{what} before the first checkpoint of {agent.logdir}", file=sys.stderr)
        else:
            print(f"{what}; continue from {last} with the same command and resume={agent.logdir}", file=sys.stderr)
        sys.exit(143 if isinstance(exc, Terminated) else 130)


def discard_unused_run_folder(folder: Path, log_root: Path) -> None:
    """Remove the run folder of a run that stopped before it produced anything (no checkpoint, no evaluation, no
    logged metric), and the folders above it up to `log_root` that this leaves empty."""
    import shutil

    if not folder.is_dir() or (folder / "checkpoint").exists() or (folder / "eval_result.json").exists():
        return
    metrics = folder / "metrics.jsonl"
    if metrics.exists() and metrics.stat().st_size > 0:
        return
    shutil.rmtree(folder, ignore_errors=True)
    root = log_root.resolve()
    parent = folder.resolve().parent
    while parent != root.parent and root in (parent, *parent.parents):
        try:
            parent.rmdir()  # only when empty
        except OSError:
            break
        parent = parent.parent


@hydra.main(version_base="1.3", config_path=None, config_name=None)
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from env.vector import EnvWorkerError

    try:
        run_config(cfg)
    except (UserError, EnvWorkerError) as exc:  # a dead or stuck env worker is reported, not traced back
        print(f"error: {exc}", file=sys.stderr)
        for folder in {Path(HydraConfig.get().runtime.output_dir), Path(str(cfg.get("logdir", "")))}:
            if str(folder) not in ("", "."):
                discard_unused_run_folder(folder, Path(str(cfg.get("log_dir", "log"))))
        sys.exit(2)


def preflight(argv: list[str]) -> None:
    """Check a single run's overrides before Hydra starts, so a typo is one clear line (not for -m sweeps)."""
    from agent.config import check_overrides

    if any(a in ("-m", "--multirun", "--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c") for a in argv):
        return
    opts, overrides = {}, []
    it = iter(argv)
    for arg in it:
        if arg.startswith("-"):
            name, eq, value = arg.partition("=")
            opts[name] = value if eq else next(it, "")
        else:
            overrides.append(arg)
    config_dir = opts.get("--config-dir") or opts.get("-cd")
    config_name = opts.get("--config-name") or opts.get("-cn")
    if not config_dir or not config_name:
        raise UserError("give --config-dir=cfg/<suite>/<stage>/<task> and --config-name=<name>")
    check_overrides(config_dir, config_name, overrides)


def promote_appends(argv: list[str]) -> list[str]:
    """`argv` with each `+key=value` whose key the config already has turned into `++key=value`.

    A key a schema declares (agent/schemas.py, e.g. `env.step_timeout`) is in every composed config, with its
    default, so Hydra would refuse to add it with `+` ("an item is already at ..."); commands written before the key
    was typed, or for DPPO's files that lack it, keep working. Other arguments are returned unchanged."""
    appends = [a for a in argv if a.startswith("+") and not a.startswith("++") and "=" in a]
    if not appends:
        return argv
    opts = dict(a.partition("=")[::2] for a in argv if a.startswith("-") and "=" in a)
    config_dir = opts.get("--config-dir") or opts.get("-cd")
    config_name = opts.get("--config-name") or opts.get("-cn")
    if not config_dir or not config_name:
        return argv
    from omegaconf import OmegaConf

    from agent.config import compose

    try:
        base = compose(config_dir, config_name, [])
    except Exception:  # preflight reports what is wrong with the config itself
        return argv
    missing = object()
    present = {a for a in appends if OmegaConf.select(base, a[1:].partition("=")[0], default=missing) is not missing}
    return [f"+{a}" if a in present else a for a in argv]


def resolve_config_dir(argv: list[str], cwd: Path | None = None) -> list[str]:
    """`argv` with a `--config-dir`/`-cd` of the form `cfg/<suite>/...` pointed at the installed configs when the
    working directory has no such folder (a wheel install run from anywhere); other arguments unchanged."""
    cwd = Path.cwd() if cwd is None else cwd
    out, it = [], iter(argv)
    for arg in it:
        name, eq, value = arg.partition("=")
        if name in ("--config-dir", "-cd"):
            if not eq:
                value = next(it, "")
            rel = Path(value)
            if not rel.is_absolute() and rel.parts[:1] == ("cfg",) and not (cwd / rel).is_dir():
                packaged = CFG_ROOT.joinpath(*rel.parts[1:])
                if packaged.is_dir():
                    value = str(packaged)
            arg = f"{name}={value}"
        out.append(arg)
    return out


def cli() -> None:
    """Entry point of `dppo-run` and `python script/run.py`."""
    from agent.checkpoint import stop_on_sigterm

    stop_on_sigterm()
    register_resolvers()
    register_search_path()
    sys.argv[1:] = promote_appends(translate_dppo_overrides(resolve_config_dir(sys.argv[1:])))
    try:
        preflight(sys.argv[1:])
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    main()
