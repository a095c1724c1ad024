"""Write docs/config-reference.md from the typed config schemas (agent/schemas.py): one table per block with each
key's type, default and meaning (taken from the schema's docstring); then the same for every class a config builds
through `_target_` under `model/` (policies, networks, critics, encoders), from the policy's `Keys` schema or the
constructor, and their docstrings.

    python script/config_reference.py           # rewrite docs/config-reference.md
    python script/config_reference.py --check   # exit 1 when the file is out of date (the tests run this)
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import re
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from agent import schemas  # noqa: E402
from agent.schemas import SCHEMAS, policy_schemas  # noqa: E402
from env.factory import EnvConfig  # noqa: E402

OUT = REPO / "docs" / "config-reference.md"
# schemas built from a block that also holds other keys, so not merged onto it by Hydra (agent.schemas.load_block)
OPEN_BLOCKS = {
    schemas.RunKeys: " (the top-level keys; built from the root, not merged onto it)",
    schemas.PPOModel: " (PPO's keys of the `model` block, beside the policy's)",
}
# pretraining, then fine-tuning from the loop's keys down to each algorithm's
DOCUMENTED = [
    schemas.PretrainTrain,
    schemas.Ema,
    schemas.LrScheduler,
    schemas.FinetuneTrain,
    schemas.ActorCriticTrain,
    schemas.OnPolicyTrain,
    schemas.PPOTrain,
    schemas.ReplayTrain,
    schemas.DQLTrain,
    schemas.FQLTrain,
    schemas.SACTrain,
    schemas.RLPDTrain,
    schemas.IBRLTrain,
    schemas.CalQLTrain,
    schemas.QSMTrain,
    schemas.DIPOTrain,
    schemas.IDQLTrain,
    schemas.AWRTrain,
    schemas.RWRTrain,
    schemas.PPOModel,
    schemas.Wandb,
    EnvConfig,
    schemas.RunKeys,
]


def attribute_docs(cls: type, heading: str = "Attributes:") -> dict[str, str]:
    """`name: text` entries of the `heading` section of `cls`'s docstring (continuation lines joined; an entry
    `a, b, c: text` gives each name the text)."""
    doc = cls.__doc__ or ""
    section = doc.split(heading, 1)[1] if heading in doc else ""
    section = re.split(r"\n\s{4}\w[\w ]*:\n", section, maxsplit=1)[0]  # up to the next section (Shapes:, ...)
    entries: list[tuple[list[str], str]] = []
    for line in section.splitlines():
        m = re.match(r"\s{8}(\w+(?:, (?:\w+|\.\.\.))*): (.*)", line)
        if m:
            entries.append(([n for n in m.group(1).split(", ") if n != "..."], m.group(2).strip()))
        elif entries and line.strip():
            entries[-1] = (entries[-1][0], f"{entries[-1][1]} {line.strip()}")
    return {name: text for names, text in entries for name in names}


def default_of(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return repr(f.default)
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(value):
            return ", ".join(f"{k}={v!r}" for k, v in dataclasses.asdict(value).items())
        return repr(value)
    return "(required)"


def doc_summary(cls: type) -> str:
    """The first paragraph of `cls`'s docstring, on one line."""
    return " ".join(line.strip() for line in (cls.__doc__ or "").strip().split("\n\n")[0].splitlines())


def table_row(cells: Sequence[str]) -> str:
    """One markdown table row (a `|` inside a cell escaped)."""
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def model_targets() -> list[str]:
    """Every `_target_` under `model.` that a config in cfg/ names, sorted."""
    found = set()
    for path in (REPO / "cfg").rglob("*.yaml"):
        found.update(re.findall(r"_target_:\s*(model\.[\w.]+)", path.read_text()))
    return sorted(found)


def constructor_keys(cls: type) -> list[tuple[str, str, str, str]]:
    """(key, type, default, meaning) of each keyword `cls(...)` takes from a config, following `*args`/`**kwargs`
    that a subclass passes on to its base class. A policy family's keys are the fields of its `Keys` dataclass (its
    schema), after the modules its constructor takes itself (network, eta, noise)."""
    rows: dict[str, tuple[str, str, str, str]] = {}
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass's text wins; a key it documents as "as <base>" takes the base's
        docs.update(
            {k: v for k, v in attribute_docs(klass, "Args:").items() if k not in docs or not v.startswith("as ")}
        )
    for klass in cls.__mro__:
        if klass is object or "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters
        for name, p in params.items():
            if name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or name in rows:
                continue
            kind = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
            default = "(required)" if p.default is p.empty else repr(p.default)
            rows[name] = (name, kind, default, docs.get(name, ""))
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            break
    keys = getattr(cls, "Keys", None)
    if keys is not None:
        key_docs = {k: v for klass in reversed(keys.__mro__) for k, v in attribute_docs(klass).items()}
        for f in dataclasses.fields(keys):
            kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            rows[f.name] = (f.name, kind, default_of(f), key_docs.get(f.name, ""))
    return list(rows.values())


def render_targets() -> list[str]:
    lines = [
        "",
        "## Classes built from `_target_` (the `model` block)",
        "",
        "The policy (`model` itself), its network (`model.network`), critics and encoders are built by",
        "`hydra.utils.instantiate` from the class their `_target_` names. A policy family's keys are the fields of",
        "its `Keys` dataclass, registered in the ConfigStore (`schema/policy_<family>`, named first in the defaults",
        "list of `cfg/common/policy/*.yaml`) as typed values, so composition refuses a value of the wrong type and",
        "`--cfg job` shows every default; the dataclass's checks run when the policy is built. For networks, critics",
        "and encoders, the constructor is the schema: its arguments are the keys, with the defaults and checks in one",
        "place. A key a class does not take is one error line naming it (`agent.config.instantiate`). PPO's own",
        "`model` keys are `PPOModel` above.",
    ]
    stored = {f"{c.__module__}.{c.__name__}": name for name, c in policy_schemas().items()}
    for target in model_targets():
        module, name = target.rsplit(".", 1)
        cls = getattr(importlib.import_module(module), name)
        summary = doc_summary(cls)
        where = f" (`schema/{stored[target]}`)" if target in stored else ""
        lines += [
            "",
            f"### `{target}`{where}",
            "",
            summary,
            "",
            "| key | type | default | meaning |",
            "|---|---|---|---|",
        ]
        for cells in constructor_keys(cls):
            cells = (f"`{cells[0]}`", f"`{cells[1]}`", f"`{cells[2]}`", cells[3])
            lines.append(table_row(cells))
    return lines


def render() -> str:
    store_names = {cls: name for name, cls in SCHEMAS.items()}
    lines = [
        "# Config reference",
        "",
        "Generated by `python script/config_reference.py` from the typed schemas in `agent/schemas.py`; do not edit.",
        "Each block is a dataclass registered in Hydra's ConfigStore (`schema/<name>`): a YAML piece names it in its",
        "defaults list, composition rejects values of the wrong type, and the agent reads the block as an instance",
        "whose checks give one-line errors. A schema that extends another lists only the keys it adds or whose",
        "default it changes. The top-level keys and PPO's `model` keys share their block with other keys, so they are",
        "built from it without being merged onto it. The policy and critic entries of `model` are built from their",
        "`_target_` class: a policy's keys are its family's `Keys` schema, a network's its constructor arguments",
        "(see [architecture.md](architecture.md)); they are listed after the blocks.",
    ]
    for cls in DOCUMENTED:
        summary = doc_summary(cls)
        docs = attribute_docs(cls)
        bases = [b for b in cls.__bases__ if dataclasses.is_dataclass(b)]
        inherited = {f.name: default_of(f) for b in bases for f in dataclasses.fields(b)}
        if cls in store_names:
            where = f" (`schema/{store_names[cls]}`)"
        else:
            where = OPEN_BLOCKS.get(cls, " (a base of the schemas below)")
        lines += ["", f"## `{cls.__name__}`{where}", "", summary]
        if bases:
            lines += ["", f"Also every key of {' and '.join(f'`{b.__name__}`' for b in bases)}."]
        lines += ["", "| key | type | default | meaning |", "|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            if inherited.get(f.name) == default_of(f) and f.name not in docs:
                continue
            kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            cells = [f"`{f.name}`", f"`{kind}`", f"`{default_of(f)}`", docs.get(f.name, "")]
            lines.append(table_row(cells))
    lines += render_targets()
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/config-reference.md is out of date")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUT.is_file() or OUT.read_text() != text:
            print(
                f"error: {OUT.relative_to(REPO)} is out of date; run python script/config_reference.py", file=sys.stderr
            )
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
