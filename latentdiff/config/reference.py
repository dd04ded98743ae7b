"""docs/config.md, generated from the sections and the rules between keys: ``reference_markdown``.

Write it with ``python docs/make_config_reference.py``; tests/test_docs.py fails when the committed file is stale.
"""

import dataclasses
import typing
from typing import Literal

import yaml

from latentdiff.config.parsing import CONSTRAINTS, Constraint, _type_name
from latentdiff.config.sections import AERunConfig, ClassifierRunConfig, JointRunConfig, LDMRunConfig

# The training commands and their run configs, in the reference's order.
COMMANDS = (("train_ae.py", AERunConfig), ("train_diffusion.py", LDMRunConfig),
            ("train_classifier.py", ClassifierRunConfig), ("train_joint.py", JointRunConfig))


def _field_comments(cls) -> dict[str, str]:
    """The ``# comment`` written after each field in the class source: the reference's explanations."""
    import inspect
    import io
    import tokenize

    comments, name = {}, None
    for tok in tokenize.generate_tokens(io.StringIO(inspect.getsource(cls)).readline):
        if tok.type == tokenize.NAME and tok.start[1] == 4 and name is None:
            name = tok.string  # the first name of an indented line: the field
        elif tok.type == tokenize.COMMENT and name:
            comments[name] = tok.string.lstrip("# ").strip()
        elif tok.type == tokenize.NEWLINE:
            name = None
    return comments


def reference_markdown() -> str:
    """docs/config.md: every section and key of the training commands' configs with type, default, limits and help.

    Regenerate with ``python docs/make_config_reference.py``; ``tests/test_docs.py`` fails when it is stale.
    """

    def row(key: str, f, hints, comments, default_value) -> str:
        tp = hints[f.name]
        meta = f.metadata or {}
        limits = []
        if typing.get_origin(tp) is Literal:
            limits.append("one of " + ", ".join(f"`{a}`" for a in typing.get_args(tp)))
        if meta.get("min") is not None:
            limits.append(f"≥ {meta['min']}")
        if meta.get("max") is not None:
            limits.append(f"≤ {meta['max']}")
        if meta.get("below") is not None:
            limits.append(f"< {meta['below']}")
        if meta.get("path") == "folder":
            limits.append("a folder (made if missing)")
        elif meta.get("path"):
            limits.append(f"an existing {meta['path']}")
        if meta.get("power_of_two"):
            limits.append("a power of two")
        text = "; ".join(x for x in (comments.get(f.name, ""), meta.get("help") or "") if x)
        default = yaml.safe_dump(default_value, default_flow_style=True).strip().removesuffix("...").strip()
        type_name = (_type_name(tp) if typing.get_origin(tp) is not Literal else "str").replace("|", "or")
        return f"| `{key}` | {type_name} | `{default}` | {', '.join(limits)} | {text} |"

    lines = ["# Configuration reference", "",
             "Generated from the dataclasses in `latentdiff/config/sections.py` by",
             "`python docs/make_config_reference.py`; do not edit by hand. Every key can be set in a recipe's YAML or",
             "on the command line as a dotted override (`train.steps=500`).", ""]
    for command, run_cls in COMMANDS:
        lines += [f"## `{command}` — `{run_cls.__name__}`", "", run_cls.__doc__.strip(), ""]
        sections = [("", run_cls, run_cls())]  # defaults read from an instance: a command may set its own
        while sections:
            prefix, cls, instance = sections.pop(0)
            hints = typing.get_type_hints(cls)
            comments = _field_comments(cls)
            rows, nested = [], []
            for f in dataclasses.fields(cls):
                if dataclasses.is_dataclass(hints[f.name]):
                    nested.append((f"{prefix}{f.name}.", hints[f.name], getattr(instance, f.name)))
                else:
                    rows.append(row(prefix + f.name, f, hints, comments, getattr(instance, f.name)))
            if rows:
                title = f"`{prefix.rstrip('.')}` — {cls.__doc__.strip().splitlines()[0]}" if prefix else "top level"
                lines += [f"### {title}", "", "| key | type | default | allowed | meaning |",
                          "|---|---|---|---|---|", *rows, ""]
            sections = nested + sections
    lines += ["## Rules between keys", "",
              "Checked together with the keys above, before any work (`latentdiff.config.CONSTRAINTS`): each mirrors",
              "a check of a constructor, so a bad value is refused here naming its key.", "",
              "| key | rule |", "|---|---|"]
    for c in CONSTRAINTS:
        for key in _dotted_keys(c):
            lines.append(f"| `{key}` | {c.rule} |")
    return "\n".join(lines) + "\n"


def _dotted_keys(c: Constraint) -> list[str]:
    """The full dotted keys a rule applies to, over the training commands' configs (each listed once)."""
    def prefixes(cls, section, prefix=""):
        if cls is section:
            yield prefix
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                yield from prefixes(hints[f.name], section, f"{prefix}{f.name}.")

    keys = {p + c.key for _, run in COMMANDS for p in prefixes(run, c.section)}
    return sorted(keys)
