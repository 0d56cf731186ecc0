"""Command-line options generated from a pass's pydantic config, and the config built back.

Each field with a simple type (bool, int, float, str, a Literal, a list of str) becomes an
option named after it (``per_channel`` -> ``--per-channel/--no-per-channel``) whose help is the
field's description and default; every field, simple or not, can also be set with
``--set KEY=VALUE`` (VALUE read as YAML: ``--set dims='{seq: [1, 64, 128]}'``). Options left
out keep the config's defaults (or the preset's), and a wrong value gets the same one-line
error a recipe would.
"""

from __future__ import annotations

import difflib
import inspect
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import typer
import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from shipyard.errors import InputError
from shipyard.problems import describe

_NONE = type(None)


def _choices(annotation: Any) -> list[str] | None:
    """The values of a Literal, or of bool | Literal[...] (``reduce_range``), as strings."""
    if get_origin(annotation) is Literal:
        return [str(v) for v in get_args(annotation)]
    if get_origin(annotation) in (Union, types.UnionType):
        values: list[str] = []
        for arg in get_args(annotation):
            if arg is bool:
                values += ["true", "false"]
            elif get_origin(arg) is Literal:
                values += [str(v) for v in get_args(arg)]
            elif arg is not _NONE:
                return None
        return values
    return None


def _option_type(annotation: Any) -> tuple[Any, dict[str, Any]] | None:
    """(type for Typer, extra Option kwargs), or None for fields only ``--set`` reaches."""
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [a for a in get_args(annotation) if a is not _NONE]
        if len(rest) == 1:
            annotation = rest[0]
    if annotation in (bool, int, float, str):
        return annotation, {}
    if annotation == list[str]:
        return list[str], {}
    choices = _choices(annotation)
    if choices:
        return Literal[tuple(choices)], {}
    return None


def option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _help(field: FieldInfo) -> str:
    text = (field.description or "").rstrip(".")
    if field.is_required():
        default = "required unless a preset gives it"
    elif field.default_factory is not None:
        default = f"default {field.default_factory()!r}"  # type: ignore[call-arg]
    else:
        default = f"default {field.default!r}"
    return f"{text} ({default})." if text else f"({default})."


def config_parameters(config: type[BaseModel], skip: Iterable[str] = ()) -> list[inspect.Parameter]:
    """One keyword parameter per simple field of ``config`` (default None: not given)."""
    params = []
    for name, field in config.model_fields.items():
        if name in skip:
            continue
        typed = _option_type(field.annotation)
        if typed is None:
            continue
        kind, extra = typed
        flag = option_name(name)
        decls = [f"{flag}/--no-{flag[2:]}"] if kind is bool else [flag]
        option = typer.Option(*decls, help=_help(field), show_default=False, **extra)
        params.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[kind | None, option],
            )
        )
    return params


def fields_summary(config: type[BaseModel]) -> str:
    """``name (default), ...`` of every field: the help of a command that takes ``--set``."""
    parts = []
    for name, field in config.model_fields.items():
        if name == "filename":
            continue
        default = (
            "required"
            if field.is_required()
            else repr(field.get_default(call_default_factory=True))
        )
        parts.append(f"{name}={default}")
    return ", ".join(parts)


def parse_sets(items: Iterable[str], config: type[BaseModel], where: str) -> dict[str, Any]:
    """``["per_channel=true", ...]`` -> ``{"per_channel": True}`` (values read as YAML)."""
    values: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise InputError(f"--set {item!r}: expected KEY=VALUE, e.g. --set per_channel=true")
        if key not in config.model_fields:
            close = difflib.get_close_matches(key, list(config.model_fields), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise InputError(
                f"--set {key}: {where} has no setting {key!r}{hint} "
                f"(known: {', '.join(config.model_fields)})"
            )
        try:
            values[key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as error:
            raise InputError(f"--set {item!r}: the value is not valid YAML: {error}") from error
    return values


def build_config(
    config: type[BaseModel],
    where: str,
    base: Mapping[str, Any],
    options: Mapping[str, Any],
    sets: Iterable[str] = (),
) -> BaseModel:
    """``base`` (a preset's values), then the options given, then ``--set`` items, validated.

    Errors name the pass's field and its option, in one line: ``quantize.per_channel
    (--per-channel): Input should be a valid boolean``.
    """
    values = {**base}
    values.update({k: v for k, v in options.items() if v is not None and v != []})
    values.update(parse_sets(sets, config, where))
    try:
        return config.model_validate(values)
    except ValidationError as error:

        def name(loc: tuple[Any, ...]) -> str:
            field = str(loc[0]) if loc else ""
            flag = f" ({option_name(field)})" if field in config.model_fields else ""
            return ".".join(str(p) for p in loc) + flag

        raise InputError(describe(error, f"{where}.", name)) from error


def with_signature(
    function: Callable[..., None],
    fixed: list[inspect.Parameter],
    generated: list[inspect.Parameter],
) -> Callable[..., None]:
    """``function(**kwargs)`` presented to Typer with ``fixed`` then ``generated`` parameters."""
    parameters = [*fixed, *generated]
    function.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    function.__annotations__ = {p.name: p.annotation for p in parameters}
    return function
