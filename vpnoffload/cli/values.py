"""Option values turned into their Python types without pydantic, where that gives the same value.

typer (0.2x) coerces every non-flag parameter through a pydantic ``TypeAdapter`` that it
builds when the command line is parsed, for every parameter of the command, given or not:
importing pydantic and building a schema per parameter is ~50 ms of each ``vpnoffload``
command, several times what the command itself parses. Our parameters are plain ``str``,
``int``, ``list[str]`` and ``Path`` options, whose values these rules give exactly as typer
does (``tests/unit/test_cli_start.py`` compares the two on every parameter of the CLI). Any other
parameter, and any value a rule does not take (``--port abc``), goes to typer's own coercion,
so its messages stay typer's. Older typers, without the pydantic layer, are left alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Only what ``int()`` and pydantic read alike: no sign, spaces, underscores or leading zeros.
_PLAIN_INT = re.compile(r"-?(?:0|[1-9][0-9]{0,17})")
_NOT_PLAIN = object()


def plain_value(annotation: Any, parameter_info: Any, value: Any) -> Any:
    """``value`` coerced to ``annotation`` as typer would, or ``_NOT_PLAIN`` when typer must do it."""
    if getattr(parameter_info, "parser", None) is not None or getattr(parameter_info, "click_type", None) is not None:
        return _NOT_PLAIN
    if getattr(parameter_info, "min", None) is not None or getattr(parameter_info, "max", None) is not None:
        return _NOT_PLAIN
    if annotation is str and isinstance(value, str):
        return value
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and _PLAIN_INT.fullmatch(value):
            return int(value)
    if annotation == list[str] and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    return _NOT_PLAIN


def _plain_path(parameter_info: Any, value: Any, param: Any, ctx: Any) -> Any:
    """A ``Path`` option checked by typer's own path rules (exists, readable, ...), handed a
    ``Path`` already: the conversion from ``str`` is what typer asks pydantic for."""
    from typer._param_types import coerce_cli_path

    if getattr(parameter_info, "path_type", None) is not None or not isinstance(value, (str, Path)):
        return _NOT_PLAIN
    return coerce_cli_path(Path(value), parameter_info, path_type=Path, param=param, ctx=ctx)


def _shaped_as_expected(base: Any) -> bool:
    """Whether typer's ``RuntimeParam`` is the dataclass this module subclasses: a typer whose
    internals differ keeps all of its own coercion (a private API: checked, not trusted)."""
    import dataclasses

    if not dataclasses.is_dataclass(base) or not callable(getattr(base, "_coerce_value", None)):
        return False
    return {f.name for f in dataclasses.fields(base)} == {"parameter_info", "annotation"}


def install() -> None:
    """Give typer's parameters the plain coercion first (once; a no-op on typers without it)."""
    try:
        from typer import _coercion, core
    except ImportError:
        return
    parameter = getattr(core, "_TyperParameter", None)
    original = getattr(parameter, "get_runtime_param", None)
    base = getattr(_coercion, "RuntimeParam", None)
    if parameter is None or original is None or base is None or getattr(original, "plain_first", False):
        return
    if not _shaped_as_expected(base):  # another typer's internals: leave its coercion alone
        return
    typer_own: Callable[[Any], Any] = original

    class PlainFirst(base):  # type: ignore[misc, valid-type]  # typer's frozen dataclass
        """Plain values here; anything else through the parameter's own typer coercion."""

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            try:
                if self.annotation is Path:
                    done = _plain_path(self.parameter_info, value, param, ctx)
                else:
                    done = plain_value(self.annotation, self.parameter_info, value)
            except (AttributeError, TypeError, ImportError):  # typer's internals moved: its own way
                done = _NOT_PLAIN
            if done is not _NOT_PLAIN:
                return done
            return typer_own(param)._coerce_value(value, param=param, ctx=ctx)

    def get_runtime_param(self: Any) -> Any:
        try:
            descriptor = self.type_descriptor
            if self._runtime_param is None and descriptor.file_annotation is None and not descriptor.is_choice:
                return PlainFirst(parameter_info=descriptor.parameter_info, annotation=descriptor.annotation)
        except (AttributeError, TypeError):  # typer's internals moved: its own way
            pass
        return typer_own(self)

    get_runtime_param.plain_first = True  # type: ignore[attr-defined]
    parameter.get_runtime_param = get_runtime_param
