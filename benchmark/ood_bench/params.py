"""One way to validate parameters: pydantic types shared by backbone, training, objective and detector settings.

The suite schema is a pydantic model; the parameters inside it (a backbone's ``params`` and ``train``, a
detector's ``params``) are validated by the same machinery with the types below, so every setting follows one
rule: integers are integers (``true`` is not 1, ``2.0`` is not 2), numbers are finite and not booleans, choices
are listed. Configs are dataclasses read with :func:`config_from_params`; detectors decorate ``__init__``
with :func:`checked`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    validate_call,
)


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a number, not true/false")
    return value


def _within(low: float | None, high: float | None, *, low_open: bool = False) -> AfterValidator:
    def check(value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("expected a finite number")
        if low is not None and (value < low or (low_open and value == low)):
            raise ValueError(f"expected a number {'>' if low_open else '>='} {low}")
        if high is not None and value > high:
            raise ValueError(f"expected a number <= {high}")
        return value

    return AfterValidator(check)


# A number keeps the type it was given (4 stays 4, 4.0 stays 4.0): values join cache keys as written.
_Num = int | float
PositiveInt = Annotated[int, Strict(), Field(gt=0)]
NonNegativeInt = Annotated[int, Strict(), Field(ge=0)]
Number = Annotated[_Num, BeforeValidator(_not_bool), _within(None, None)]
PositiveNumber = Annotated[_Num, BeforeValidator(_not_bool), _within(0, None, low_open=True)]
NonNegativeNumber = Annotated[_Num, BeforeValidator(_not_bool), _within(0, None)]
Fraction = Annotated[_Num, BeforeValidator(_not_bool), _within(0, 1)]
Flag = Annotated[bool, Strict()]

STRICT = ConfigDict(extra="forbid")


def describe(exc: ValidationError) -> str:
    """A pydantic error as one line per problem: the parameter, what is wrong, and the value given."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "value"
        given = f" (got {error['input']!r})" if error["type"] not in ("missing", "extra_forbidden",
                                                                     "unexpected_keyword_argument") else ""
        message = "unknown parameter" if error["type"] in ("extra_forbidden", "unexpected_keyword_argument") \
            else error["msg"].removeprefix("Value error, ")
        parts.append(f"'{where}': {message}{given}")
    return "; ".join(parts)


T = TypeVar("T")


def config_from_params(config_cls: type[T], params: Any, owner: str) -> T:
    """The config dataclass ``config_cls`` for ``params``; ValueError naming each unknown key (with the allowed
    ones) or bad value. ``__post_init__`` still checks what involves several fields."""
    if not isinstance(params, dict):
        raise ValueError(f"{owner} parameters must be a mapping, got {type(params).__name__}")
    allowed = [f.name for f in dataclasses.fields(config_cls)]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"unknown {owner} parameter(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}")
    try:
        return TypeAdapter(config_cls, config=None).validate_python(params)
    except ValidationError as exc:
        raise ValueError(f"invalid {owner} parameter {describe(exc)}") from None


F = TypeVar("F", bound=Callable[..., Any])


def checked(init: F) -> F:
    """Validate a detector's ``__init__`` arguments against its annotations (the types above); a bad value is a
    ValueError (pydantic's ValidationError) that :func:`describe` turns into one line."""
    return validate_call(init, config=ConfigDict(arbitrary_types_allowed=False))  # type: ignore[return-value]
