"""Command-line flags generated from dataclass fields: one source of truth for a setting's name,
type, default and help (the pattern of TRL's ``TrlParser`` / ``HfArgumentParser``).

A field becomes a flag when its metadata has ``help``; everything else about the flag follows from
the field unless the metadata says otherwise:

* ``flag``: the spelling (default ``--`` + the field name with ``-`` for ``_``), e.g. ``--lr`` for
  ``learning_rate``. The argparse ``dest`` is derived from the flag, so two dataclasses whose fields
  share a flag share one parsed value (the flag must then have one default, one type and one
  action; :func:`add_flags` raises otherwise).
* ``aliases``: old spellings, accepted but not shown in ``--help`` (the CLI's help formatter shows
  an option's first spelling only).
* the type: from the annotation (``int``, ``float``, ``str``, ``bool``, ``X | None``); ``type``
  overrides it. A ``bool`` defaulting to False is a switch (``store_true``); one defaulting to True
  needs a ``--no-…`` flag (``negate``: the flag stores False).
* ``choices``, ``nargs``, ``const``, ``metavar``; ``append`` (a repeatable flag collecting a list).

The default is the field's default and is appended to the help text as ``(default X)`` — help
texts themselves never state a default they do not own (a field whose default is None may say what
None means, e.g. "default: the rows'").
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: metadata keys a flag field may carry
KEYS = frozenset({"help", "flag", "aliases", "type", "choices", "nargs", "const", "metavar",
                  "append", "negate"})


@dataclasses.dataclass(frozen=True)
class Flag:
    """One generated flag: the field it sets, on which dataclass."""

    owner: type
    field: str
    flag: str
    aliases: tuple[str, ...]
    dest: str
    default: Any
    kwargs: Mapping[str, Any]     # argparse keyword arguments (without dest, default, help)
    help: str

    def shown_default(self) -> str | None:
        """The default as the help text states it (None: nothing to state)."""
        value = self.default
        if value is None or value is False or (isinstance(value, (list, tuple)) and not value):
            return None
        if self.kwargs.get("action") == "store_false":
            return None  # a --no-X switch: its default is "not given"
        return format_default(value)


def format_default(value: Any) -> str:
    """A default as help texts write it: ``1e-05`` as ``1e-5``, lists comma-separated."""
    if isinstance(value, float):
        text = repr(value)
        if "e-0" in text:
            text = text.replace("e-0", "e-")
        return text
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def dest_of(flag: str) -> str:
    """The argparse ``dest`` of a spelling."""
    return flag.lstrip("-").replace("-", "_")


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(element type, is a sequence) of a field annotation; ``X | None`` → X."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"a flag field needs one type, not {annotation!r} (give metadata 'type')")
        return _base_type(args[0])
    if origin in (list, tuple, Sequence, typing.Sequence):
        items = typing.get_args(annotation)
        return (items[0] if items else str), True
    return annotation, False


def flags_of(cls: type) -> list[Flag]:
    """The flags of a dataclass: its fields that carry ``metadata["help"]``, in field order."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "help" not in meta:
            continue
        unknown = set(meta) - KEYS
        if unknown:
            raise ValueError(f"{cls.__name__}.{f.name}: unknown flag metadata {sorted(unknown)}; "
                             f"known: {', '.join(sorted(KEYS))}")
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None  # a required field: a required flag
        flag = meta.get("flag") or flag_name(f.name)
        base, many = (meta["type"], False) if "type" in meta else _base_type(hints[f.name])
        kwargs: dict[str, Any] = {}
        if meta.get("negate"):
            if base is not bool or default is not True:
                raise ValueError(f"{cls.__name__}.{f.name}: 'negate' is for a bool defaulting to True")
            kwargs["action"] = "store_false"
        elif base is bool and "type" not in meta:
            if default is not False:
                raise ValueError(f"{cls.__name__}.{f.name}: a bool flag defaulting to {default!r} "
                                 f"needs 'negate' (a --no-… flag) or a 'type'")
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = meta.get("type", base)
            if meta.get("append") or many:
                kwargs["action"] = "append"
            for key in ("choices", "nargs", "const", "metavar"):
                if key in meta:
                    kwargs[key] = meta[key]
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            kwargs["required"] = True
        text = meta["help"]
        dest = dest_of(flag)  # a --no-X flag: dest no_x holds the field's value (True: not given)
        out.append(Flag(owner=cls, field=f.name, flag=flag, aliases=tuple(meta.get("aliases", ())),
                        dest=dest, default=default, kwargs=kwargs, help=text))
        shown = out[-1].shown_default()
        if shown is not None and "default" in text:
            raise ValueError(f"{cls.__name__}.{f.name}: the help states a default; the generator "
                             f"adds '(default {shown})' from the field")
    return out


def help_text(flag: Flag, suffix: str = "") -> str:
    shown = flag.shown_default()
    text = flag.help + (f" (default {shown})" if shown is not None else "") + suffix
    return text.replace("%", "%%")


def add_flags(parser, classes: Iterable[type], *, groups: Mapping[type, Any] | None = None,
              suffix: Mapping[str, str] | None = None) -> dict[str, Flag]:
    """Add the flags of ``classes`` to ``parser`` (or, per class, to ``groups[cls]``). A flag that
    several classes share is added once, where the first declares it, with every class's old
    spellings; they must agree on its default and action. ``suffix[flag]`` is appended to that
    flag's help. Returns the flags added, by spelling."""
    added: dict[str, Flag] = {}
    aliases: dict[str, list[str]] = {}
    where: dict[str, Any] = {}
    for cls in classes:
        for flag in flags_of(cls):
            first = added.get(flag.flag)
            clash = [f for f in added.values() if f.dest == flag.dest and f.flag != flag.flag]
            if clash:
                raise ValueError(f"{flag.flag} and {clash[0].flag} would share the value "
                                 f"{flag.dest!r}")
            if first is None:
                added[flag.flag] = flag
                where[flag.flag] = (groups or {}).get(cls, parser)
            elif (first.default, dict(first.kwargs)) != (flag.default, dict(flag.kwargs)):
                raise ValueError(
                    f"{flag.flag} is {first.owner.__name__}.{first.field} (default "
                    f"{first.default!r}, {dict(first.kwargs)}) and {cls.__name__}.{flag.field} "
                    f"(default {flag.default!r}, {dict(flag.kwargs)}): one flag, one default")
            names = aliases.setdefault(flag.flag, [])
            names += [a for a in flag.aliases if a not in names]
    for name, flag in added.items():
        default = list(flag.default) if flag.kwargs.get("action") == "append" else flag.default
        where[name].add_argument(name, *aliases[name], dest=flag.dest, default=default,
                                 help=help_text(flag, (suffix or {}).get(name, "")),
                                 **flag.kwargs)
    return added


def values_for(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The parsed values of ``cls``'s flag fields, by field name (a ``--no-X`` flag's stored
    dest holds the field's value, True unless the flag is given)."""
    return {flag.field: getattr(args, flag.dest) for flag in flags_of(cls)}


def pick(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` that are fields of ``cls``."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}
