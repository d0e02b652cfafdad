"""Options written once: a dataclass field carries its command-line help, and argparse arguments are made
from the dataclass (in the spirit of transformers' HfArgumentParser).

    @dataclass
    class Config:
        data: Path = option(help="dataset directory")            # required: --data
        epochs: int = option(10, help="passes over the data")     # --epochs, shown as "(default: 10)"
        files: list[Path] = option(flag="files", nargs="+", help="inputs", default_factory=list)  # positional

    add_options(parser, Config)
    cfg = options_from_args(Config, parser.parse_args())
    to_argv(cfg)    # and back: the arguments that give cfg its values

The type of an argument comes from the annotation: int, float, str, Path, `X | None`, `list[X]`; a bool
defaulting to False is a switch (store_true), one defaulting to True or None gets `--no-NAME` as well
(BooleanOptionalAction). A default appears once, where the help formatter shows it
(chitchat.cli's formatter shows every default that is not None or False).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import MISSING

_META = "chitchat.option"


def option(default=MISSING, *, help: str, flag: str | None = None, aliases: tuple[str, ...] = (),
           metavar: str | None = None, choices=None, nargs=None, cli: bool = True, default_factory=MISSING,
           group: str | None = None):
    """A dataclass field whose metadata carries its command-line spelling and help. `flag` defaults to
    "--" + the field name with "_" as "-"; a flag without leading dashes is a positional argument. A
    field whose type is itself a dataclass of options contributes that dataclass's flags (in `group`),
    and `options_from_args` builds it from them: a command's options are one dataclass, read in one pass."""
    meta = {_META: {"help": help, "flag": flag, "aliases": tuple(aliases), "metavar": metavar,
                    "choices": choices, "nargs": nargs, "cli": cli, "group": group}}
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _unwrap(tp):
    """(base type, optional, list element type or None) of an annotation."""
    optional = False
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        if len(args) != 1:
            raise TypeError(f"unsupported annotation {tp!r}: one type or one type | None")
        tp = args[0]
        origin = typing.get_origin(tp)
    if origin in (list, tuple):
        elem = typing.get_args(tp)[0] if typing.get_args(tp) else str
        return tp, optional, elem
    return tp, optional, None


def _default(f: dataclasses.Field):
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def _cli_fields(cls, skip=()):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata.get(_META)
        if meta is None or not meta["cli"] or f.name in skip:
            continue
        yield f, meta, hints[f.name]


def add_options(parser, cls, *, group: str | None = None, skip: tuple[str, ...] = (),
                defaults: dict | None = None) -> None:
    """One argparse argument per field of dataclass `cls` made with `option()` (fields with cli=False or
    named in `skip` are left out), in a group titled `group` if given; `defaults` overrides a field's
    default for this command."""
    defaults = defaults or {}
    unknown = set(defaults) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {', '.join(sorted(unknown))}")
    target = parser
    if group:  # a group of that title already there (another call's) gets the new arguments too
        target = next((g for g in parser._action_groups if g.title == group), None) or parser.add_argument_group(group)
    for f, meta, hint in _cli_fields(cls, skip):
        if dataclasses.is_dataclass(hint):  # a nested dataclass of options: its own flags
            add_options(parser, hint, group=meta.get("group") or group, defaults=defaults.get(f.name),
                        skip=tuple(s.split(".", 1)[1] for s in skip if s.startswith(f.name + ".")))
            continue
        default = defaults[f.name] if f.name in defaults else _default(f)
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        positional = not flag.startswith("-")
        names = [flag] if positional else [flag, *meta["aliases"]]
        kwargs: dict = {"help": meta["help"].replace("%", "%%")}  # argparse formats help with %
        if meta["metavar"] is not None:
            kwargs["metavar"] = meta["metavar"]
        if meta["choices"] is not None:
            kwargs["choices"] = tuple(meta["choices"])
        tp, optional, elem = _unwrap(hint)
        if tp is bool:
            if positional:
                raise TypeError(f"{cls.__name__}.{f.name}: a bool cannot be positional")
            if default is False:
                kwargs["action"] = "store_true"
            else:
                kwargs["action"] = argparse.BooleanOptionalAction
            kwargs["default"] = default
            target.add_argument(*names, dest=f.name, **kwargs)
            continue
        if elem is not None:
            kwargs["type"] = elem
            kwargs["nargs"] = meta["nargs"] or ("*" if default is not MISSING else "+")
        else:
            kwargs["type"] = tp
            if meta["nargs"] is not None:
                kwargs["nargs"] = meta["nargs"]
        if default is MISSING:
            if not positional:
                kwargs["required"] = True
        else:
            kwargs["default"] = default
            if positional and "nargs" not in kwargs:
                kwargs["nargs"] = "?"
        if positional:  # its spelling is what help shows: the metavar
            if flag != f.name and "metavar" not in kwargs:
                kwargs["metavar"] = flag
            target.add_argument(f.name, **kwargs)
        else:
            target.add_argument(*names, dest=f.name, **kwargs)


def options_from_args(cls, args, **overrides):
    """An instance of `cls` from a parsed namespace: the fields it holds, `overrides` over them; fields
    absent from the namespace (not on the command line) keep their defaults."""
    values = vars(args) if not isinstance(args, dict) else args
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        meta = f.metadata.get(_META, {})
        if f.name in overrides:
            kwargs[f.name] = overrides[f.name]
        elif meta.get("cli", True) and dataclasses.is_dataclass(hints.get(f.name)):
            kwargs[f.name] = options_from_args(hints[f.name], values)
        elif f.name in values and meta.get("cli", True):
            kwargs[f.name] = values[f.name]
    unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {', '.join(sorted(unknown))}")
    return cls(**kwargs)


def to_argv(cfg) -> list[str]:
    """The arguments that `add_options` parses back into `cfg`'s option fields (to print the command that
    does what a call does): positional values first, then the flag of each field whose value is not its
    default. A field with cli=False has no flag, nor has None where the default is not None: the caller
    adds the arguments that stand for them."""
    positional: list[str] = []
    flags: list[str] = []
    for f, meta, hint in _cli_fields(type(cfg)):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(hint):  # a nested dataclass of options: its own flags
            flags += to_argv(value)
            continue
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        values = [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
        if not flag.startswith("-"):
            positional += values if value is not None else []
        elif value is None or value == _default(f):
            continue
        elif isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        else:
            flags += [flag, *values]
    return positional + flags


__all__ = ["option", "add_options", "options_from_args", "to_argv"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one to show: not None, not an off switch."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def command_parser(name: str, module, parent=None, help: str | None = None) -> argparse.ArgumentParser:
    """The parser of `chitchat NAME`, whose module defines `add_arguments(p)` and `run(args)`: a subparser
    of `parent` (the subparsers of `chitchat`), or standalone."""
    description = (module.__doc__ or help or "").strip().split("\n\n")[0]
    kwargs = dict(description=description, formatter_class=HelpFormatter)
    p = parent.add_parser(name, help=help, **kwargs) if parent is not None else \
        argparse.ArgumentParser(prog=f"chitchat {name}", **kwargs)
    module.add_arguments(p)
    p.set_defaults(_module=module)
    return p
