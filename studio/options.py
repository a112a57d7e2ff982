"""Config dataclasses as the single source of a command's options.

A field's metadata says how it is shown and checked; from that one place come
the command-line flags (`add_arguments`, `from_args`), the checks the CLI and
the app share (`check_fields`), and the argv that repeats a config (`to_argv`; a
background job gets its config as JSON instead, studio/jobs/runner.py).

    steps: int = option(1000, "optimizer steps", min=1)
    lr: float = option(5e-5, "learning rate", above=0)
    validation_prompts: tuple[str, ...] = option((), "...", flag="validation-prompt")  # repeatable

Metadata keys: help, flag (the flag's name without --; default: the field's, with
dashes), label (how messages name the field; default: the flag), choices, min,
max (inclusive), above (exclusive lower bound), max_length (strings).
"""

import argparse
import math
import typing
from dataclasses import MISSING, field, fields

REQUIRED = MISSING


def option(default=REQUIRED, help: str = "", **meta):
    """A config field with its help text and checks; a list or tuple default is copied per instance."""
    meta = {"help": help, **meta}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def flag(f) -> str:
    return f.metadata.get("flag") or f.name.replace("_", "-")


def label(f) -> str:
    """How messages name a field: its label and flag ("learning rate (--lr)"), or the flag alone."""
    return f"{f.metadata['label']} (--{flag(f)})" if "label" in f.metadata else f"--{flag(f)}"


def _kind(cls, f):
    """(base type, optional, sequence kind) of a field from its annotation."""
    hint = typing.get_type_hints(cls)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    if optional:
        hint = args[0]
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        return typing.get_args(hint)[0], optional, origin
    return hint, optional, None


def add_arguments(parser: argparse.ArgumentParser, cls, exclude: tuple[str, ...] = ()) -> None:
    """One flag per field of `cls` (but those in `exclude`): bools as --x/--no-x, tuples repeatable, lists
    comma-separated. Keyword-only fields (switches a config inherits) come after the config's own."""
    for f in sorted(fields(cls), key=lambda f: f.kw_only is True):
        if f.name in exclude:
            continue
        base, _, sequence = _kind(cls, f)
        kwargs = {"help": f.metadata.get("help", ""), "dest": f.name}
        if f.default is REQUIRED and f.default_factory is REQUIRED:
            kwargs["required"] = True
        elif f.default is not REQUIRED:
            kwargs["default"] = f.default
            if f.default not in (None, (), "") and base is not bool:
                kwargs["help"] += f" (default: {f.default})"
        if "choices" in f.metadata and sequence is None:  # a list's items are checked by check_fields
            kwargs["choices"] = f.metadata["choices"]
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif sequence is tuple:
            kwargs.update(action="append", type=base)
            kwargs.pop("default", None)
        elif sequence is list:
            kwargs["type"] = lambda text: [part.strip() for part in text.split(",") if part.strip()]
            if f.default_factory is not REQUIRED:
                kwargs["default"] = f.default_factory()
        else:
            kwargs["type"] = base
        parser.add_argument(f"--{flag(f)}", **kwargs)


def from_args(cls, args: argparse.Namespace, **fixed):
    """The config the flags describe; `fixed` sets fields that had no flag (add_arguments' `exclude`), and any
    other field without a flag keeps its default."""
    values = dict(fixed)
    for f in fields(cls):
        if f.name in fixed or not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        if _kind(cls, f)[2] is tuple:
            value = tuple(value or ())
        values[f.name] = value
    return cls(**values)


def to_argv(config) -> list[str]:
    """The flags that reproduce `config` (fields at their default are left out). A None where the default is a
    value has no flag that says it, so it is refused rather than lost."""
    argv = []
    for f in fields(config):
        value = getattr(config, f.name)
        default = f.default if f.default is not REQUIRED else (f.default_factory() if f.default_factory is not REQUIRED
                                                               else REQUIRED)
        if value == default:
            continue
        if value is None:
            raise ValueError(f"{label(f)} is None, which no flag can say (its default is {default!r}); "
                             "pass the config as JSON instead")
        name = f"--{flag(f)}"
        if isinstance(value, bool):
            argv.append(name if value else f"--no-{flag(f)}")
        elif isinstance(value, tuple):
            for item in value:
                argv += [name, str(item)]
        elif isinstance(value, list):
            argv += [name, ",".join(str(v) for v in value)]
        else:
            argv += [name, repr(value) if isinstance(value, float) else str(value)]
    return argv


def check_text(name: str, text: str, max_length: int | None) -> None:
    """Plain text of at most `max_length` characters (tabs and newlines allowed), or ValueError naming `name`."""
    if any(ord(c) < 32 and c not in "\t\n" for c in text):
        raise ValueError(f"{name} contains control characters; use plain text")
    if max_length is not None and len(text) > max_length:
        raise ValueError(f"{name} is {len(text):,} characters long; at most {max_length:,} are allowed")


def check_fields(config) -> None:
    """Raise ValueError naming the first field whose value is of the wrong type, not finite or out of range."""
    cls = type(config)
    for f in fields(config):
        value, name, meta = getattr(config, f.name), label(f), f.metadata
        base, optional, sequence = _kind(cls, f)
        if value is None:
            if optional:
                continue
            raise ValueError(f"{name} is missing")
        items = list(value) if sequence else [value]
        if sequence and not isinstance(value, (list, tuple)):
            raise ValueError(f"{name} must be a list, got {value!r}")
        for item in items:
            if base is float and isinstance(item, int) and not isinstance(item, bool):
                item = float(item)
            if not isinstance(item, base) or (base is int and isinstance(item, bool)):
                raise ValueError(f"{name} must be {base.__name__}, got {item!r}")
            if base in (int, float):
                if not math.isfinite(item):
                    raise ValueError(f"{name} must be a finite number, got {item}")
                if "min" in meta and item < meta["min"]:
                    raise ValueError(f"{name} must be at least {meta['min']}, got {item}")
                if "above" in meta and item <= meta["above"]:
                    raise ValueError(f"{name} must be above {meta['above']}, got {item}")
                if "max" in meta and item > meta["max"]:
                    raise ValueError(f"{name} must be at most {meta['max']:,}, got {item}")
            if base is str:
                check_text(name, item, meta.get("max_length"))
            if "choices" in meta and item not in meta["choices"]:
                raise ValueError(f"{name} must be one of {', '.join(map(str, meta['choices']))}, got {item!r}")


def from_dict(cls, data: dict):
    """A config from its JSON form (lists back to tuples where the field is a tuple); unknown keys are refused."""
    names = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {', '.join(sorted(unknown))}")
    return cls(**{k: tuple(v) if _kind(cls, names[k])[2] is tuple and isinstance(v, list) else v
                  for k, v in data.items()})
