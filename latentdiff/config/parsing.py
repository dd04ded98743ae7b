"""From a YAML recipe and dotted overrides to a checked config: ConfigError, type coercion, field limits,
``load_config``, ``from_dict``, ``to_dict``, ``dump_yaml``, and the registry of rules between keys.

Nothing here names a section: it reads whichever dataclass it is given (those of ``sections``). A recipe is a
YAML mapping whose keys mirror the fields; a command line adds ``key.sub=value`` overrides (values parsed as YAML, so
``train.steps=100`` is an int and ``model.channel_mults=[1,2]`` a list). ``from_dict`` builds each section: every key
known, every value coerced to its field's type and within its ``check(...)`` limits, then the rules registered with
``@constraint`` for that section (written in ``constraints``). The first problem is one :class:`ConfigError` line
naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config problem, already phrased as one line for the user."""


def _type_name(tp) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value, tp, key: str):
    """Return ``value`` checked (and mildly coerced: int -> float, list -> tuple) against type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        raise errors[0] if len(errors) == 1 else ConfigError(
            f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}{hint}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):  # nan would train or sample silently into black images
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")  # a bug in a config class


def _check_value(value, meta: dict, key: str):
    if value is None or not meta:
        return
    items = value if isinstance(value, list | tuple) else [value]
    for v in items:
        if meta.get("min") is not None and v < meta["min"]:
            raise ConfigError(f"{key}: {value!r} is below the minimum {meta['min']}")
        if meta.get("max") is not None and v > meta["max"]:
            raise ConfigError(f"{key}: {value!r} is above the maximum {meta['max']}")
        if meta.get("below") is not None and v >= meta["below"]:
            raise ConfigError(f"{key}: {value!r} must be below {meta['below']}")
        if meta.get("power_of_two") and (v < 1 or v & (v - 1)):
            raise ConfigError(f"{key}: {v!r} must be a power of two")
    kind = meta.get("path")
    if kind:
        p = Path(value).expanduser()
        hint = f"; {meta['help']}" if meta.get("help") else ""
        if kind == "dir" and not p.is_dir():
            raise ConfigError(f"{key}: folder {value!r} does not exist{hint}")
        if kind == "file" and not p.is_file():
            raise ConfigError(f"{key}: file {value!r} does not exist{hint}")
        if kind == "folder":
            while not p.exists() and p != p.parent:
                p = p.parent
            if not p.is_dir():
                raise ConfigError(f"{key}: {value!r} must be a folder, but {str(p)!r} is a file")


def from_dict(cls, data: dict | None, prefix: str = "", base=None):
    """Build dataclass ``cls`` from a nested dict, validating every key, type and range.

    Keys not given take the values of ``base`` (an instance of ``cls``), else the field defaults; a
    section's ``default_factory`` is its base, so a command can ship its own defaults for a shared
    section (``ClassifierRunConfig.train``).
    """
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key '{prefix}{key}'{hint} (valid: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            section = getattr(base, name) if base is not None else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            kwargs[name] = from_dict(tp, data.get(name), prefix=f"{prefix}{name}.", base=section)
        elif name in data:
            value = _coerce(data[name], tp, prefix + name)
            _check_value(value, dict(f.metadata), prefix + name)
            kwargs[name] = value
        elif base is not None:
            kwargs[name] = getattr(base, name)
    obj = cls(**kwargs)
    check_constraints(obj, prefix)
    return obj


def to_dict(cfg) -> dict:
    """Plain nested dict (lists, not tuples) that YAML and ``torch.load(weights_only=True)`` accept."""

    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(cfg))


def _set_dotted(data: dict, dotted: str, value):
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{k}' is not a section")
    node[keys[-1]] = value


def load_config(cls, path: str | Path | None = None, overrides: list[str] | tuple = ()):
    """Read a YAML recipe (optional), apply ``key.sub=value`` overrides, validate, return a ``cls``."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (byte {e.object[e.start]:#04x} at "
                              f"offset {e.start}): is it a YAML recipe?") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"config file {str(path)!r} is not valid YAML{where}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        _set_dotted(data, key.strip(), value)
    return from_dict(cls, data)


def dump_yaml(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# ----------------------------------------------------------------------------- rules between keys
#
# The registry lives here and the rules in constraints.py: ``from_dict`` applies the rules, and constraints.py
# imports the sections, which import ConfigError from here, so the imports run one way.


@dataclass(frozen=True)
class Constraint:
    """One rule: ``check(section)`` returns None or the problem, reported as '<prefix><key>: <problem>'."""

    section: type
    key: str  # dotted, relative to the section
    rule: str  # what is required, for docs/config.md
    check: Any


CONSTRAINTS: list[Constraint] = []


def constraint(section: type, key: str, rule: str):
    def register(fn):
        CONSTRAINTS.append(Constraint(section, key, rule, fn))
        return fn
    return register


def check_constraints(cfg, prefix: str = "") -> None:
    """Apply every rule of ``CONSTRAINTS`` registered for ``type(cfg)``; the first broken one is a ConfigError.

    ``from_dict`` calls this for every section it builds (so a section checks its own keys, and a run config
    the rules that span its sections), with the section's dotted ``prefix``.
    """
    for c in CONSTRAINTS:
        if isinstance(cfg, c.section):
            problem = c.check(cfg)
            if problem:
                raise ConfigError(f"{prefix}{c.key}: {problem}")
