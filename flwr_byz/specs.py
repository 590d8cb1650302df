"""Spec strings shared by the registries (``get_aggregator``, ``get_attack``).

A part is ``name`` or ``name:arg,arg,...``; an arg is positional (``bucketing:2``) or
``key=value`` (``geomed:nu=0.1,max_iter=3``, dashes in keys read as underscores). Values are
Python literals (``2``, ``0.5``, ``'x'``, ``(1, 2)``), ``none``/``null`` for ``None``,
``true``/``false`` (any case) for booleans, and
anything else stays a string (``non-finite:mix``). Arguments bind to the dataclass's init
fields in order, skipping the names the caller supplies itself (``f``, ``base``, ``seed``).
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["build", "listing", "parse_value", "split_part", "unknown"]


def listing(known: Iterable[str] | Mapping[str, Iterable[str]]) -> str:
    """The accepted names as the errors and ``--help`` texts show them: ``a, b, c``, or by
    group, ``rules: a, b; wrappers: c, d`` (``known`` maps a group's label to its names: pass
    a registry dict's ``list(...)`` for its keys)."""
    if isinstance(known, Mapping):
        return "; ".join(f"{label}: {', '.join(names)}" for label, names in known.items())
    return ", ".join(known)


def unknown(
    kind: str,
    name: str,
    known: Iterable[str] | Mapping[str, Iterable[str]],
    spec: str | None = None,
    hint: str = "",
) -> ValueError:
    """The error for a name no registry has, in one format for every kind of spec:
    ``unknown <kind> '<name>' [in '<spec>'][ (<hint>)]; known: <every accepted name>``."""
    where = f" in {spec.strip()!r}" if spec is not None and spec.strip() != name else ""
    note = f" ({hint})" if hint else ""
    return ValueError(f"unknown {kind} {name!r}{where}{note}; known: {listing(known)}")


def parse_value(text: str) -> Any:
    """A spec value: a Python literal, ``None`` for ``none``/``null``, else the string itself."""
    if text.lower() in ("none", "null"):
        return None
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def split_part(part: str) -> tuple[str, list[str]]:
    """``"name:a,b=1"`` -> ``("name", ["a", "b=1"])`` (name stripped, case kept; args raw)."""
    name, _, argtext = part.partition(":")
    return name.strip(), argtext.split(",") if argtext else []


def build(
    cls: type,
    args: list[str],
    part: str,
    kind: str,
    defaults: Mapping[str, Any] | None = None,
    fixed: Mapping[str, Any] | None = None,
) -> Any:
    """Instantiate the dataclass ``cls`` from the raw spec ``args`` of ``part``.

    ``defaults`` (e.g. ``{"f": f}``, ``{"seed": seed}``) are passed to ``cls`` when it has
    that field and the spec does not set it by ``key=value``; ``fixed`` (e.g.
    ``{"base": rule}``) are always passed and cannot be set in the spec. Neither takes a
    positional slot. Raises ``ValueError`` (``"<kind> spec '<part>': ..."``) for an unknown
    parameter, too many positional arguments or a fixed name set in the spec.
    """
    defaults = defaults or {}
    fixed = fixed or {}
    fields = [fd.name for fd in dataclasses.fields(cls) if fd.init]
    positional = [fd for fd in fields if fd not in defaults and fd not in fixed]
    kwargs: dict[str, Any] = {}
    for i, arg in enumerate(a for a in args if a):
        if "=" in arg:
            key, value = arg.split("=", 1)
            key = key.strip().replace("-", "_")
        elif i < len(positional):
            key, value = positional[i], arg
        else:
            raise ValueError(
                f"{kind} spec {part!r}: too many positional arguments (takes {positional})"
            )
        if key not in fields:
            raise ValueError(f"{kind} spec {part!r}: unknown parameter {key!r} (has {fields})")
        if key in fixed:
            raise ValueError(f"{kind} spec {part!r}: parameter {key!r} is set by the spec itself")
        kwargs[key] = parse_value(value.strip())
    for key, value in defaults.items():
        if key in fields and key not in kwargs:
            kwargs[key] = value
    kwargs.update(fixed)
    factory: Callable[..., Any] = cls
    return factory(**kwargs)
