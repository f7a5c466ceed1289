"""Documented, constrained dataclass fields and their validation.

Both the core config sections (:mod:`tladapt.config`) and every plugin's ``Options``
dataclass declare their fields with :func:`option`, which carries the field's
one-line help and its numeric range. :func:`validate_dataclass` checks raw config
data against such a dataclass: unknown keys, types (strictly, by pydantic), ranges,
and NaN/inf anywhere a float is expected. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Annotated, Any, Union

import pydantic

from tladapt.errors import ConfigError

#: Field metadata keys that :func:`option` turns into pydantic constraints.
BOUNDS = ("gt", "ge", "lt", "le")

_FINITE = pydantic.ConfigDict(allow_inf_nan=False)


def option(default: Any, help: str, *, gt: float | None = None, ge: float | None = None,
           lt: float | None = None, le: float | None = None) -> Any:
    """A dataclass field with its one-line documentation and optional numeric bounds.

    ``help`` is shown by ``tladapt plugins`` and the generated config reference. The
    bounds (``gt`` >, ``ge`` >=, ``lt`` <, ``le`` <=) apply to the value, or to every
    element of a list or value of a dict of numbers, or to the numeric members of a
    union (``Literal["median"] | float`` bounds the float only), and are checked by
    :func:`validate_dataclass` before any training. For other constraints annotate
    the type itself, e.g. ``Annotated[int, pydantic.Field(multiple_of=2)]``. Mutable
    defaults (lists, dicts) are copied per instance.

    Example::

        @dataclass
        class Options:
            weight: float = option(1.0, "coefficient of the domain loss", ge=0)
            hidden: list[int] = option([1024], "discriminator sizes", gt=0)
    """
    meta = {"help": help, **{k: v for k, v in (("gt", gt), ("ge", ge), ("lt", lt), ("le", le)) if v is not None}}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def field_help(f: dataclasses.Field) -> str:
    """The help text of a field declared with :func:`option` ('' otherwise)."""
    return f.metadata.get("help", "")


def field_bounds(f: dataclasses.Field) -> str:
    """The field's bounds as text, e.g. ``">= 0, < 1"`` ('' when unbounded)."""
    symbols = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    return ", ".join(f"{symbols[k]} {f.metadata[k]}" for k in BOUNDS if k in f.metadata)


def field_default(f: dataclasses.Field) -> Any:
    """The field's default value (calling its factory)."""
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _constrained(hint: Any, f: dataclasses.Field) -> Any:
    bounds = {k: f.metadata[k] for k in BOUNDS if k in f.metadata}
    if not bounds:
        return hint
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        return list[_constrained(args[0], f)]
    if origin is dict:
        return dict[args[0], _constrained(args[1], f)]
    if origin in (Union, types.UnionType):  # bound the numeric members, leave Literal/str members alone
        return Union[tuple(_constrained(a, f) if a in (int, float) or typing.get_origin(a) in (list, dict) else a
                           for a in args)]
    return Annotated[hint, pydantic.Field(**bounds)]


def _data_loc(value: Any, loc: tuple) -> str:
    """The position of an error inside ``value`` as ``[0]['key']``, without pydantic's union-member tags."""
    parts = []
    for part in loc:
        if isinstance(value, (list, tuple)) and isinstance(part, int) and 0 <= part < len(value):
            value = value[part]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            continue  # a union member's name such as 'constrained-float'
        parts.append(f"[{part!r}]")
    return "".join(parts)


def _adapter(cls: type, name: str) -> pydantic.TypeAdapter:
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    hint = typing.get_type_hints(cls, include_extras=True)[name]
    return pydantic.TypeAdapter(_constrained(hint, f), config=_FINITE)


def check_value(cls: type, name: str, value: Any, where: str) -> tuple[Any, list[str]]:
    """Validate one field value of dataclass ``cls`` strictly.

    Returns:
        ``(validated value, problems)``; each problem names ``where.name`` (and the
        element's position inside a list or dict), what was expected and the value.
    """
    try:
        return _adapter(cls, name).validate_python(value, strict=True), []
    except pydantic.ValidationError as err:
        f = {f.name: f for f in dataclasses.fields(cls)}[name]
        by_loc: dict[str, list[dict]] = {}
        for e in err.errors():
            by_loc.setdefault(_data_loc(value, e["loc"]), []).append(e)
        problems = []
        for loc, errors in by_loc.items():
            # In a union, a bound or finiteness error of the numeric member says more than the others.
            pointed = [e for e in errors if e["type"] in _BOUND_ERRORS or e["type"] == "finite_number"]
            e = (pointed or errors)[0]
            if e["type"] in _BOUND_ERRORS:
                problems.append(f"{where}.{name}{loc} must be {field_bounds(f)}, got {e['input']!r}")
            elif e["type"] == "finite_number":
                problems.append(f"{where}.{name}{loc} must be a finite number, got {e['input']!r}")
            else:
                first, *rest = dict.fromkeys(x["msg"] for x in errors)  # a union: one message per member
                msg = ", or ".join([first] + [m.removeprefix("Input should be ") for m in rest])
                problems.append(f"{where}.{name}{loc}: {msg} (got {e['input']!r})")
        return value, problems


_BOUND_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


class Checked:
    """Base of dataclasses that validate themselves on construction and on every later
    assignment (the core config sections), so that ``TrainerSection(steps=0)`` and
    ``section.steps = 0`` raise like ``trainer.steps = 0`` in a file does. Subclasses set
    ``where``, the config location used in messages.

    Raises:
        ConfigError: from ``__init__`` or an assignment, for a value of the wrong type,
            outside its bounds or non-finite, naming ``where.key``.
    """

    where: typing.ClassVar[str] = ""

    def __post_init__(self) -> None:
        problems = []
        for f in dataclasses.fields(self):
            value, found = check_value(type(self), f.name, getattr(self, f.name), self.where)
            problems += found
            if not found:
                object.__setattr__(self, f.name, value)
        if problems:
            raise ConfigError("invalid config value: " + "; ".join(problems))

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.__dict__ and name in self.__dataclass_fields__:  # a field set again after __init__
            value, problems = check_value(type(self), name, value, self.where)
            if problems:
                raise ConfigError("invalid config value: " + "; ".join(problems))
        object.__setattr__(self, name, value)


def validate_dataclass(cls: type, data: dict[str, Any], where: str):
    """Build dataclass ``cls`` from raw ``data``, checking keys, types and bounds.

    Every field is checked, defaults included (a default outside its bounds is a bug
    in the dataclass and is reported like a bad value).

    Args:
        cls: a dataclass type whose fields may carry :func:`option` metadata.
        data: its field values; missing fields take their defaults.
        where: the config location for messages, e.g. ``"trainer"`` or ``"plugins.dann"``.

    Returns:
        An instance of ``cls`` holding the validated values.

    Raises:
        ConfigError: for data that is not a table, an unknown key (listing the valid
            keys), or values of the wrong type, outside their bounds, or non-finite
            (each problem naming ``where.key``, what was expected and the value).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"[{where}] must be a table, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise ConfigError(f"unknown key {where}.{key}: valid keys are {', '.join(fields) or '(none)'}")
    values, problems = {}, []
    for name, f in fields.items():
        if name in data:
            values[name], found = check_value(cls, name, data[name], where)
        elif f.init:
            _, found = check_value(cls, name, field_default(f), where)
        else:
            found = []
        problems += found
    if problems:
        raise ConfigError("invalid config value: " + "; ".join(problems))
    return cls(**values)
