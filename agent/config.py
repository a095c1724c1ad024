"""Config plumbing: resolvers, the shared-config search path, instantiation with clear errors, and checks.

Experiment files live at `cfg/<suite>/<stage>/<task>/<name>.yaml` and compose shared pieces from `cfg/common/`
through Hydra defaults lists (`- /common/pretrain@_here_`). `register_search_path()` makes `cfg/` visible to
Hydra wherever `--config-dir` points.
"""

from __future__ import annotations

import ast
import difflib
import math
import operator
import os
import re
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException, ValidationError

from agent.errors import ConfigError

if TYPE_CHECKING:
    from agent.schemas import RunKeys

REPO_ROOT = Path(__file__).resolve().parent.parent
# The configs: `cfg/` of a checkout (an editable install included), or the copy a wheel installs as `agent/cfg`.
_PACKAGED_CFG = Path(__file__).resolve().parent / "cfg"
CFG_ROOT = _PACKAGED_CFG if _PACKAGED_CFG.is_dir() else REPO_ROOT / "cfg"

_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_CMPOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
_FUNCS: dict[str, Callable[..., Any]] = {
    "min": min,
    "max": max,
    "int": int,
    "float": float,
    "round": round,
    "abs": abs,
    "ceil": math.ceil,
    "floor": math.floor,
}


# Bounds that keep `${eval:...}` from running until killed: integers of at most this many bits (about 1200 digits;
# `9**9**9` has 370 million) and strings or lists of at most this many items (`"a" * 10**10`).
MAX_EVAL_INT_BITS = 4096
MAX_EVAL_SEQUENCE = 100_000


class EvalError(ConfigError, ValueError):
    """An `${eval:'...'}` expression that cannot be evaluated; the message names the key and the expression."""


def _bounded_binop(op: type, left: Any, right: Any) -> Any:
    """`left <op> right`, refusing (ValueError) results beyond `MAX_EVAL_INT_BITS` / `MAX_EVAL_SEQUENCE` before
    computing them."""
    ints = all(isinstance(v, int) for v in (left, right))
    if op is ast.Pow and ints and right > 0 and abs(left) > 1:
        bits = right * (abs(left).bit_length() - 1)  # a lower bound of the result's bit length
        if bits > MAX_EVAL_INT_BITS:
            raise ValueError(f"the power has at least {bits} bits (more than {MAX_EVAL_INT_BITS})")
    if op is ast.Mult:
        seq, count = (left, right) if isinstance(left, (str, list)) else (right, left)
        if isinstance(seq, (str, list)) and isinstance(count, int):
            if len(seq) * count > MAX_EVAL_SEQUENCE:
                raise ValueError(f"the repeated sequence has {len(seq) * count} items (more than {MAX_EVAL_SEQUENCE})")
        elif ints and left.bit_length() + right.bit_length() > MAX_EVAL_INT_BITS + 1:
            raise ValueError(f"the product has more than {MAX_EVAL_INT_BITS} bits")
    return _BINOPS[op](left, right)


def safe_eval(expr: str, _node_: Any = None) -> Any:
    """Evaluate the arithmetic in `${eval:'...'}` without executing arbitrary Python (DPPO used `eval`).

    Supports numbers, strings, + - * / // % **, comparisons, `a if c else b`, lists, and min/max/int/float/round/
    abs/ceil/floor. Integers are bounded to `MAX_EVAL_INT_BITS` bits and repeated strings and lists to
    `MAX_EVAL_SEQUENCE` items, checked before the result is computed.

    Args:
        expr: the expression.
        _node_: the config node being resolved (passed by OmegaConf), to name its key in errors.

    Raises:
        EvalError: one line naming the key, the expression and the problem (unsupported syntax, a bound, a math
            error such as a division by zero).
    """

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool, type(None))):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _bounded_binop(type(node.op), ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd, ast.Not)):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else (+v if isinstance(node.op, ast.UAdd) else not v)
        if isinstance(node, ast.Compare) and all(type(o) in _CMPOPS for o in node.ops):
            left = ev(node.left)
            for op, comp in zip(node.ops, node.comparators):
                right = ev(comp)
                if not _CMPOPS[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.IfExp):
            return ev(node.body) if ev(node.test) else ev(node.orelse)
        if isinstance(node, (ast.List, ast.Tuple)):
            return [ev(e) for e in node.elts]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS:
            return _FUNCS[node.func.id](*[ev(a) for a in node.args])
        raise ValueError(f"unsupported syntax {type(node).__name__} (only arithmetic, comparisons and {names})")

    names = "/".join(_FUNCS)
    try:
        return ev(ast.parse(str(expr), mode="eval"))
    except (ValueError, TypeError, ArithmeticError, SyntaxError, RecursionError) as exc:
        key = _node_._get_full_key(None) if _node_ is not None else None
        where = f"{key}=" if key else ""
        problem = exc.msg if isinstance(exc, SyntaxError) else (str(exc) or type(exc).__name__)
        raise EvalError(f"{where}${{eval:'{expr}'}} cannot be evaluated: {problem}") from exc


def register_resolvers() -> None:
    """Register `eval`, `round_up`, `round_down` (and `now` when Hydra has not) with OmegaConf; idempotent."""
    OmegaConf.register_new_resolver("eval", safe_eval, replace=True)
    OmegaConf.register_new_resolver("round_up", lambda x: int(math.ceil(float(x))), replace=True)
    OmegaConf.register_new_resolver("round_down", lambda x: int(math.floor(float(x))), replace=True)
    if not OmegaConf.has_resolver("now"):
        OmegaConf.register_new_resolver(
            "now", lambda pattern: datetime.now().strftime(pattern), use_cache=True, replace=True
        )


def register_search_path() -> None:
    """Add `cfg/` to Hydra's config search path so experiment files can compose `/common/...` pieces, and the typed
    schemas (agent/schemas.py) to its ConfigStore so they can compose `/schema/...`."""
    from agent.schemas import register_schemas

    register_schemas()
    from hydra.core.config_search_path import ConfigSearchPath
    from hydra.core.plugins import Plugins
    from hydra.plugins.search_path_plugin import SearchPathPlugin

    class DppoSearchPathPlugin(SearchPathPlugin):
        def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
            search_path.append(provider="dppo", path=f"file://{CFG_ROOT}")

    plugins = Plugins.instance()
    if not any(getattr(p, "__name__", "") == "DppoSearchPathPlugin" for p in _registered):
        plugins.register(DppoSearchPathPlugin)
        _registered.append(DppoSearchPathPlugin)


_registered: list[type] = []


def compose(config_dir: str | Path, config_name: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose a config the way `script/run.py` does (for tests and tools), without changing directory."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    register_search_path()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides or []), return_hydra_config=False)


def instantiate(node: Any, where: str, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate` that turns a wrong key or impossible value into one `ConfigError` line.

    A key the class does not take is named with its full path and, when the node holds a key spelt almost the same,
    that key as a suggestion (`model.network.mlp_dim is not a parameter of DiffusionMLP; did you mean
    model.network.mlp_dims?`).

    Args:
        node: a config node with `_target_`.
        where: its config path (e.g. `model.network`), named in the error.
        **kwargs: extra constructor arguments (e.g. an already built network).
    """
    from hydra.errors import InstantiationException
    from hydra.utils import get_class
    from hydra.utils import instantiate as hydra_instantiate

    if node is None or "_target_" not in node:
        raise ConfigError(f"{where} needs a `_target_` naming the class to build")
    try:
        cls = get_class(node._target_)
    except Exception as exc:
        raise ConfigError(f"{where}._target_={node._target_} cannot be imported ({exc})") from exc
    try:
        return hydra_instantiate(node, **kwargs, _recursive_=True, _convert_="all")
    except InstantiationException as exc:
        raise ConfigError(_instantiation_error(node, where, exc)) from exc
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where} ({cls.__name__}): {_first_line(exc)}") from exc


_FULL_KEY = re.compile(r"^full_key: (\S+)$", re.MULTILINE)
_UNEXPECTED_KEYWORD = re.compile(r"got an unexpected keyword argument '(\w+)'")


def _instantiation_error(node: Any, where: str, exc: Exception) -> str:
    """One line for Hydra's failure to build `node` (or a child node): the failing node's path and class, then the
    unknown key with a suggestion, or the constructor's own message."""
    cause = exc.__cause__ or exc
    failing, path = node, where
    match = _FULL_KEY.search(str(exc))
    full_key = match.group(1) if match else ""
    relative = full_key[len(where) + 1 :] if full_key.startswith(f"{where}.") else "" if full_key == where else full_key
    for part in filter(None, relative.split(".")):
        if not isinstance(failing, DictConfig) or part not in failing:
            break
        failing, path = failing[part], f"{path}.{part}"
    target = failing.get("_target_") if isinstance(failing, DictConfig) else None
    name = str(target or node._target_).rsplit(".", 1)[-1]
    unexpected = _UNEXPECTED_KEYWORD.search(str(cause))
    if unexpected is None:
        return f"{path} ({name}): {_first_line(cause)}"
    key = unexpected.group(1)
    others = [str(k) for k in failing if not str(k).startswith("_") and k != key] if target else []
    close = difflib.get_close_matches(key, others, n=1, cutoff=0.8)
    hint = f"did you mean {path}.{close[0]}?" if close else f"see the Args in the docstring of {target}"
    return f"{path}.{key} is not a parameter of {name}; {hint}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


def resolve_config(cfg: DictConfig) -> None:
    """Resolve every interpolation of `cfg` in place; a failure is one `ConfigError` line (an `${eval:...}` one names
    its key and expression, see `safe_eval`)."""
    try:
        OmegaConf.resolve(cfg)
    except (OmegaConfBaseException, ValueError, ArithmeticError) as exc:  # bad `${eval:...}`, unknown `${key}`
        msg = str(exc).strip().splitlines()[0]
        prefix = f"{EvalError.__name__} raised while resolving interpolation: "
        if msg.startswith(prefix):
            raise ConfigError(msg[len(prefix) :]) from exc
        raise ConfigError(f"the config does not resolve: {msg}; check that interpolation") from exc


# Vector envs a run may ask for: a sane ceiling, and a rough floor of memory per env (a low-dim MuJoCo env with its
# wrappers and buffers), so that a typo such as env.n_envs=100000000 stops at once instead of filling the memory.
MAX_ENVS = 4096
ENV_MEMORY_BYTES = 8 << 20


def max_envs() -> int:
    """`MAX_ENVS`, or fewer when this machine's physical memory holds fewer envs of `ENV_MEMORY_BYTES`."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not available on this platform
        return MAX_ENVS
    return max(1, min(MAX_ENVS, memory // ENV_MEMORY_BYTES))


def require(cond: bool, message: str) -> None:
    """Raise `ConfigError(message)` unless `cond`."""
    if not cond:
        raise ConfigError(message)


def validate_common(cfg: DictConfig) -> RunKeys:
    """The typed top-level keys (agent.schemas.RunKeys, whose own checks run on building it), and the checks shared
    by every agent across blocks: the fine-tuned steps against the DDIM steps, the loop's counts, model widths."""
    from agent.schemas import RunKeys, load_block

    run: RunKeys = load_block(RunKeys, cfg, "", open_block=True)
    get = lambda key: OmegaConf.select(cfg, key, default=None)  # noqa: E731
    k_ft = run.ft_denoising_steps
    if k_ft is not None:
        use_ddim = bool(get("model.use_ddim"))
        limit, limit_key = (
            (get("model.ddim_steps"), "model.ddim_steps") if use_ddim else (run.denoising_steps, "denoising_steps")
        )
        if limit is not None:
            require(
                k_ft <= limit,
                f"ft_denoising_steps={k_ft} is larger than {limit_key}={limit}; set ft_denoising_steps <= {limit}",
            )
    # the settings before what is derived from them (train.batch_size is n_steps * n_envs / k in some configs)
    for key in ("train.n_epochs", "train.n_train_itr", "train.n_steps", "env.n_envs", "train.batch_size"):
        v = get(key)
        require(v is None or (isinstance(v, int) and v >= 1), f"{key} must be an integer >= 1, got {v!r}")
    n_envs, limit = get("env.n_envs"), max_envs()
    require(
        n_envs is None or n_envs <= limit,
        f"env.n_envs={n_envs} is more envs than a run can hold (at most {limit}: {MAX_ENVS} or this machine's "
        f"memory at {ENV_MEMORY_BYTES >> 20} MiB per env); use fewer, e.g. env.n_envs=40",
    )
    model = get("model")
    if isinstance(model, DictConfig):
        _check_dims(model, "model")
    return run


def _check_dims(node: DictConfig, where: str) -> None:
    """Every `*_dims` key under `node` (layer widths such as `model.network.mlp_dims`) is null or a list of positive
    integers."""
    for key in node:
        if OmegaConf.is_missing(node, key):
            continue
        value = node[key]
        if isinstance(value, DictConfig):
            _check_dims(value, f"{where}.{str(key)}")
        elif str(key).endswith("_dims") and value is not None:
            ok = isinstance(value, ListConfig) and all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value
            )
            shown = OmegaConf.to_container(value) if isinstance(value, ListConfig) else value
            require(ok, f"{where}.{str(key)} must be a list of positive integers such as [256, 256], got {shown!r}")


def check_overrides(config_dir: str | Path, config_name: str, overrides: list[str]) -> None:
    """Compose once before Hydra does, turning a wrong override into one `ConfigError` line with a suggestion; then
    resolve the composed config and run `validate_common`, so that these errors come before Hydra creates the run
    folder.

    Hydra's own message for `model.network.mlp_dim=3` spans several lines and does not say what was meant.
    """
    from hydra.errors import ConfigCompositionException, MissingConfigException

    plain = [o for o in overrides if not o.startswith("hydra")]
    check_override_syntax(overrides)
    try:
        cfg = compose(config_dir, config_name, plain)
    except MissingConfigException as exc:
        folder = Path(config_dir)
        if not (folder / f"{config_name}.yaml").is_file():
            names = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
            where = f"available there: {', '.join(names)}" if names else "that folder has no configs"
            raise ConfigError(f"no config {config_name}.yaml in {config_dir}; {where}") from exc
        for override in plain:  # a config group choice that does not exist, e.g. `encoder=resnt`
            key, _, value = override.partition("=")
            options = config_group_options(config_dir, key)
            if options is not None and value not in options:
                raise ConfigError(f"{key}={value} is not a choice; {key}= takes one of {', '.join(options)}") from exc
        raise ConfigError(f"cannot compose the config: {_first_line(exc)}") from exc
    except ConfigCompositionException as exc:
        cause = exc.__cause__ or exc
        base = compose(config_dir, config_name, [])
        for override in plain:
            key = override.split("=", 1)[0]
            if key.startswith(("+", "~")) or OmegaConf.select(base, key, default="__missing__") != "__missing__":
                continue
            options = config_group_options(config_dir, key)
            if options is not None:  # a choice such as `encoder=`: fine if this config has it
                try:
                    compose(config_dir, config_name, [override])
                    continue
                except ConfigCompositionException:
                    raise ConfigError(
                        f"{config_name} has no `{key}` choice; {key}={'|'.join(options)} applies only to configs "
                        f"whose defaults use cfg/{key}/"
                    ) from exc
            raise ConfigError(f"{key} is not a key of this config; {_suggest(base, key)}") from exc
        if isinstance(cause, ValidationError) and cause.full_key:  # a typed block's value of the wrong type
            reason = str(cause).strip().splitlines()[0]
            raise ConfigError(f"{cause.full_key}: {reason}; give a value of that type") from exc
        raise ConfigError(f"cannot compose the config: {_first_line(cause)}") from exc
    resolve_config(cfg)
    validate_common(cfg)
    logdir = OmegaConf.select(cfg, "logdir", default=None)
    if logdir:
        check_log_folder(Path(str(logdir)))


def check_log_folder(logdir: Path) -> None:
    """Raise one `ConfigError` line when the run folder `logdir` cannot be created: a part of its path is a file,
    too long a name, or a parent that is not writable (before Hydra tries and fails with a traceback)."""
    hint = "set log_dir=<folder> or DPPO_LOG_DIR to a writable folder"
    for part in logdir.parts:
        if len(os.fsencode(part)) > 255:
            raise ConfigError(f"the run folder {logdir} has a name longer than 255 bytes ({part[:40]}...); {hint}")
    parent = logdir
    while not parent.exists():
        if parent.parent == parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"cannot create the run folder {logdir}: {parent} is a file, not a folder; {hint}")
    try:  # the one reliable test (root passes os.access; /proc refuses anyway): make and remove a folder there
        os.rmdir(tempfile.mkdtemp(prefix=".probe-", dir=parent))
    except OSError as exc:
        raise ConfigError(f"cannot create the run folder {logdir} in {parent} ({exc.strerror}); {hint}") from exc


def check_override_syntax(overrides: list[str]) -> None:
    """Parse each `key=value` override as Hydra will; a malformed one (`train.batch_size=[1,2`) is one line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_overrides([override])
        except OverrideParseException as exc:
            reason = str(exc).strip().splitlines()[0]
            raise ConfigError(
                f"cannot parse the override {override!r} ({reason}); close brackets and quotes, and quote values "
                "holding spaces or special characters, e.g. 'key=\"a b\"'"
            ) from exc


def config_group_options(config_dir: str | Path, key: str) -> list[str] | None:
    """The options of config group `key` (a folder of the config dir or of `cfg/`, e.g. `encoder` -> resnet, vit);
    None when `key` names no config group (a plain config key such as `train.n_epochs`)."""
    if not key or key.startswith(("+", "~", "hydra")) or "." in key:
        return None
    for root in (Path(config_dir), CFG_ROOT):
        folder = root / key.split("@", 1)[0]
        if folder.is_dir() and any(folder.glob("*.yaml")):
            return sorted(p.stem for p in folder.glob("*.yaml"))
    return None


def _suggest(cfg: DictConfig, key: str) -> str:
    """'did you mean a.b?' for the first missing part of dotted `key`, else how to add a new key."""
    node: Any = cfg
    parts = key.split(".")
    for i, part in enumerate(parts):
        if isinstance(node, DictConfig) and part in node:
            node = node[part]
            continue
        options = [str(k) for k in node] if isinstance(node, DictConfig) else []
        close = difflib.get_close_matches(part, options, n=1)
        if close:
            return f"did you mean {'.'.join([*parts[:i], close[0], *parts[i + 1 :]])}?"
        break
    return f"use +{key}=... to add a new key"
