"""CEL expressions (DESIGN.md section 6): compiled once and cached, evaluated over JSON values.

Used for workflow conditions (`skip_if`, `cancel_if` over `input` and `parents`), event filters
(`payload`, `metadata`, `key`, and a waiting step's `input`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import celpy
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError

_ENVIRONMENT = celpy.Environment()


class ExpressionError(Exception):
    """An expression that does not compile, or does not evaluate to what was needed."""


@lru_cache(maxsize=4096)
def compile_expression(text: str) -> celpy.Runner:
    """The compiled program; raises ExpressionError naming the position of a syntax error."""
    try:
        ast = _ENVIRONMENT.compile(text)
    except CELParseError as exc:
        where = f" at line {exc.line}, column {exc.column}" if exc.line else ""
        raise ExpressionError(f"{text!r} is not valid CEL{where}") from None
    return _ENVIRONMENT.program(ast)


def holds(text: str, variables: dict[str, Any]) -> bool:
    """Evaluate a boolean expression over JSON-like variables."""
    program = compile_expression(text)
    try:
        result = program.evaluate({name: json_to_cel(value)
                                   for name, value in variables.items()})
    except Exception as exc:  # CEL reports missing keys, bad overloads, ... as exceptions
        reason = exc.args[0] if isinstance(exc, CELEvalError) and exc.args else exc
        raise ExpressionError(f"{text!r} could not be evaluated: {reason}") from None
    if not isinstance(result, celpy.celtypes.BoolType):
        raise ExpressionError(f"{text!r} must be true or false, not {type(result).__name__}")
    return bool(result)
