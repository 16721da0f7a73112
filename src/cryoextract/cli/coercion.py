"""Option values converted without pydantic, where typer's conversion is certain.

typer (0.26+) converts every option value through a pydantic ``TypeAdapter``: importing
pydantic and building the adapters is 0.08-0.1 s of every command's start, a tenth of a
small job. The options of this command line are plain (str, int, float, bool, Path, an
Enum, tuples and lists of those), and for the values people type (``256``, ``1.5e-3``,
``ramp``, a path) the result is certain. :func:`fast_coercion` gives each such option of
a command a conversion that returns exactly what typer's would for those values, and
hands any other value (``inf``, ``12.0``, a choice not offered, an empty path, anything
unusual) to typer's own conversion, built on first need: results and error messages
stay typer's. Options with a parser, files or path checks keep typer's conversion; so
does everything where typer's internals are not the ones this was written against.
"""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Any, get_args, get_origin

#: a value the fast conversion leaves to typer's
_UNSURE = object()
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
#: path flags whose checks only typer's conversion does
_PATH_CHECKS = {"exists": False, "file_okay": True, "dir_okay": True, "writable": False,
                "readable": True, "resolve_path": False, "allow_dash": False,
                "path_type": None}


def fast_coercion(command: Any, ctx: Any = None) -> None:
    """Give ``command``'s plain options, and its ``--help`` under ``ctx``, the fast
    conversion (before it parses)."""
    try:
        from typer._coercion import RuntimeParam, build_runtime_param
        from typer.core import _TyperParameter
    except ImportError:  # another typer: its own conversion throughout
        return
    runtime = _runtime_class(RuntimeParam, build_runtime_param)
    help_option = command.get_help_option(ctx) if ctx is not None else None
    for param in [*getattr(command, "params", ()), *filter(None, [help_option])]:
        if not isinstance(param, _TyperParameter) \
                or getattr(param, "_runtime_param", _UNSURE) is not None:
            continue
        descriptor = getattr(param, "type_descriptor", None)
        if descriptor is None or descriptor.file_annotation is not None \
                or not _supported(descriptor.annotation, descriptor.parameter_info):
            continue
        try:
            param._runtime_param = runtime(descriptor.parameter_info, descriptor.annotation,
                                           descriptor)
        except TypeError:  # typer's RuntimeParam is not the one this was written for
            return


def _runtime_class(base: type, build: Any) -> type:
    """A typer ``RuntimeParam`` converting with :func:`_convert`, else typer's own."""
    from dataclasses import dataclass, field

    @dataclass(frozen=True)
    class FastRuntimeParam(base):  # type: ignore[misc, valid-type]
        descriptor: Any
        fallback: list[Any] = field(default_factory=list, compare=False)

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            converted = _convert(value, self.annotation, self.parameter_info, ctx)
            if converted is not _UNSURE:
                return converted
            if not self.fallback:
                self.fallback.append(build(self.descriptor))
            return self.fallback[0]._coerce_value(value, param=param, ctx=ctx)

    return FastRuntimeParam


def _supported(annotation: Any, info: Any) -> bool:
    if getattr(info, "parser", None) is not None or getattr(info, "clamp", None):
        return False
    if get_origin(annotation) in (list, tuple):
        args = get_args(annotation)
        return bool(args) and Ellipsis not in args \
            and (get_origin(annotation) is tuple or len(args) == 1) \
            and all(_supported(a, info) for a in args)
    if annotation is Path:
        return all(getattr(info, name, default) == default
                   for name, default in _PATH_CHECKS.items())
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return getattr(info, "case_sensitive", True) is True
    return annotation in (int, float, str, bool, Any)


def _convert(value: Any, annotation: Any, info: Any, ctx: Any) -> Any:
    """``value`` converted to ``annotation``, or :data:`_UNSURE`."""
    origin = get_origin(annotation)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return _UNSURE
        args = get_args(annotation)
        if origin is list:
            items = [_convert(item, args[0], info, ctx) for item in value]
        elif len(args) == len(value):
            items = [_convert(item, arg, info, ctx) for item, arg in zip(value, args,
                                                                          strict=True)]
        else:
            return _UNSURE
        return _UNSURE if any(item is _UNSURE for item in items) else origin(items)
    if annotation is Any:
        return value
    if annotation is Path:
        return _path(value, info, ctx)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        if isinstance(value, annotation):
            return value
        matches = [member for member in annotation if str(member.value) == value]
        plain = getattr(ctx, "token_normalize_func", None) is None
        return matches[0] if len(matches) == 1 and plain else _UNSURE
    if annotation is bool:
        return value if isinstance(value, bool) else _UNSURE
    if annotation is str:
        return value if isinstance(value, str) else _UNSURE
    number = _number(value, annotation)
    if number is _UNSURE:
        return _UNSURE
    low, high = getattr(info, "min", None), getattr(info, "max", None)
    if (low is not None and number < low) or (high is not None and number > high):
        return _UNSURE  # typer's message names the bound
    return number


def _number(value: Any, annotation: Any) -> Any:
    if isinstance(value, bool):
        return _UNSURE
    if annotation is int:
        if isinstance(value, int):
            return value
        return int(value) if isinstance(value, str) and _INT.fullmatch(value) else _UNSURE
    if annotation is float:
        if isinstance(value, (int, float)):
            return float(value)
        return float(value) if isinstance(value, str) and _FLOAT.fullmatch(value) \
            else _UNSURE
    return _UNSURE


def _path(value: Any, info: Any, ctx: Any) -> Any:
    """typer's path conversion (its existence and access checks) once ``value`` is a
    Path, which typer would otherwise make with pydantic."""
    if not isinstance(value, (str, Path)) or value == "":
        return _UNSURE
    from typer._param_types import coerce_cli_path

    try:
        return coerce_cli_path(Path(value), info, path_type=Path, ctx=ctx)
    except Exception:  # typer's conversion words the refusal
        return _UNSURE
