"""CEL expressions (DESIGN.md section 6): compiled once and cached, evaluated over JSON values.

Used for workflow conditions (`skip_if`, `cancel_if` over `input` and `parents`), event filters
(`payload`, `metadata`, `key`, and a waiting step's `input`), concurrency keys and rate-limit keys
and units (`input`, `metadata`).

Any role may send an expression, and evaluation runs on the event loop that serves every tenant,
so each one is bounded (docs/security.md): its length, how deeply its syntax nests, how deeply
its macros nest at compile time, and the steps one evaluation may take. What exceeds a bound is
an ExpressionError naming it, which the edge answers with 422.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import celpy
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.evaluation import Activation, CELEvalError, Evaluator
from lark import Token, Tree

MAX_LENGTH = 1_000  # characters
MAX_SYNTAX_DEPTH = 120  # levels of the parse tree (a pair of parentheses is about ten)
MAX_MACRO_NESTING = 2  # `a.map(x, x.b.exists(y, ...))` is two
MAX_STEPS = 500  # syntax nodes visited by one evaluation, every macro iteration included
_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})  # bind their first argument


class ExpressionError(Exception):
    """An expression that does not compile, or does not evaluate to what was needed."""


class _OutOfSteps(Exception):
    """An evaluation used up its steps (raised from inside CEL's evaluator, which turns most
    exceptions into error values: `_Budget.spent` is the truth)."""


class _Budget:
    __slots__ = ("left", "spent")

    def __init__(self, steps: int) -> None:
        self.left = steps
        self.spent = False


class _BoundedEvaluator(Evaluator):
    """CEL's tree-walking evaluator, one step per syntax node visited: macros evaluate their
    body through sub-evaluators sharing the budget, so nested iteration is counted too."""

    def __init__(self, ast: Tree[Any], activation: Activation, budget: _Budget) -> None:
        super().__init__(ast, activation)
        self.budget = budget

    def sub_evaluator(self, ast: Tree[Any]) -> Evaluator:
        return _BoundedEvaluator(ast, self.activation, self.budget)

    def member_dot_arg(self, tree: Tree[Any]) -> Any:
        """`all` and `exists` decided by their first deciding element, as CEL says: cel-python
        folds every element, wrapping each error's text in the next one (exponential)."""
        method = str(tree.children[1])
        if method not in ("all", "exists"):
            return super().member_dot_arg(tree)
        members = self.visit(tree.children[0])
        if isinstance(members, CELEvalError):
            return members
        if not isinstance(members, list | dict):
            return CELEvalError(
                f"no such overload: {type(members).__name__}.{method}()", TypeError, ()
            )
        deciding = method == "exists"  # exists: one true decides; all: one false does
        body = self.build_ss_macro_eval(tree)
        error = None
        for member in members:
            value = body(member)
            if isinstance(value, celpy.celtypes.BoolType):
                if bool(value) is deciding:
                    return celpy.celtypes.BoolType(deciding)
            elif error is None:
                error = (
                    value
                    if isinstance(value, CELEvalError)
                    else CELEvalError(
                        f"{method}() needs true or false, not {type(value).__name__}", TypeError, ()
                    )
                )
        return error if error is not None else celpy.celtypes.BoolType(not deciding)

    def _visit_tree(self, tree: Tree[Any]) -> Any:
        budget = self.budget
        budget.left -= 1
        if budget.left < 0:
            budget.spent = True
            raise _OutOfSteps
        return super()._visit_tree(tree)


class _BoundedRunner(celpy.InterpretedRunner):
    def evaluate(self, context: Any) -> Any:
        budget = _Budget(MAX_STEPS)
        evaluator = _BoundedEvaluator(self.ast, self.new_activation(), budget)
        try:
            value = evaluator.evaluate(context)
        except _OutOfSteps:
            value = None
        if budget.spent:
            raise _OutOfSteps
        return value


_ENVIRONMENT = celpy.Environment(runner_class=_BoundedRunner)
_NUMBERS = (celpy.celtypes.IntType, celpy.celtypes.UintType, celpy.celtypes.DoubleType)


def _numbers_only(name: str, function: Any) -> Any:
    """CEL multiplies and divides numbers only; cel-python's types inherit Python's `list * n`
    and `str * n`, one step that could fill the engine's memory."""

    def arithmetic(left: Any, right: Any) -> Any:
        if type(left) in _NUMBERS and type(right) in _NUMBERS:
            return function(left, right)
        for operand in (left, right):
            if isinstance(operand, CELEvalError):
                return operand  # an error met earlier goes on as it is
        return CELEvalError(
            f"no such overload: {type(left).__name__} {name} {type(right).__name__}", TypeError, ()
        )

    return arithmetic


_ARITHMETIC = {
    "_*_": _numbers_only("*", operator.mul),
    "_/_": _numbers_only("/", operator.truediv),
    "_%_": _numbers_only("%", operator.mod),
}
_UNBOUNDED_MACROS = frozenset({"reduce", "min"})  # cel-python extensions, not CEL


@lru_cache(maxsize=4096)
def compile_expression(text: str) -> celpy.Runner:
    """The compiled program; raises ExpressionError naming the position of a syntax error, or
    the bound an expression exceeds."""
    if len(text) > MAX_LENGTH:
        raise ExpressionError(
            f"{text[:40]!r}... is {len(text):,} characters long; an "
            f"expression may have at most {MAX_LENGTH:,}"
        )
    try:
        ast = _ENVIRONMENT.compile(text)
    except CELParseError as exc:
        where = f" at line {exc.line}, column {exc.column}" if exc.line else ""
        raise ExpressionError(f"{text!r} is not valid CEL{where}") from None
    _check_shape(text, ast)
    return _ENVIRONMENT.program(ast, functions=_ARITHMETIC)


def _check_shape(text: str, ast: Tree[Any]) -> None:
    """Refuse what nests too deeply to evaluate safely: the evaluator recurses once per syntax
    level, and nested macros multiply their lists' lengths."""
    stack: list[tuple[Tree[Any], int, int]] = [(ast, 1, 0)]
    while stack:
        node, depth, macros = stack.pop()
        if depth > MAX_SYNTAX_DEPTH:
            raise ExpressionError(
                f"{text!r} nests too deeply (parentheses, calls, or a long "
                f"chain of operators); its syntax may be at most "
                f"{MAX_SYNTAX_DEPTH} levels deep"
            )
        if node.data == "member_dot_arg" and len(node.children) >= 2:
            method = str(node.children[1])
            if method in _UNBOUNDED_MACROS:
                raise ExpressionError(f"{text!r} calls {method}(), which is not part of CEL")
            if method in _MACROS:
                macros += 1
                if macros > MAX_MACRO_NESTING:
                    raise ExpressionError(
                        f"{text!r} nests {method}() inside {macros - 1} other macros; macros "
                        f"(all, exists, exists_one, map, filter) may nest {MAX_MACRO_NESTING} "
                        f"deep at most"
                    )
        stack.extend(
            (child, depth + 1, macros) for child in node.children if isinstance(child, Tree)
        )


_INT64 = range(-(2**63), 2**63)
_int = celpy.celtypes.IntType
_str = celpy.celtypes.StringType
_float = celpy.celtypes.DoubleType


def _to_cel(value: Any) -> Any:
    """JSON data as CEL values, as cel-python's json_to_cel makes them, at a tenth of its cost
    (its IntType and StringType constructors cost ~30 µs each: converting a large input took
    longer than evaluating the expression)."""
    if isinstance(value, str):
        return str.__new__(_str, value)
    if isinstance(value, bool):
        return celpy.celtypes.BoolType(value)
    if isinstance(value, int):
        return int.__new__(_int, value) if value in _INT64 else _int(value)  # refuses overflow
    if isinstance(value, float):
        return float.__new__(_float, value)
    if isinstance(value, dict):
        return celpy.celtypes.MapType(
            {str.__new__(_str, key): _to_cel(item) for key, item in value.items()}
        )
    if isinstance(value, list | tuple):
        return celpy.celtypes.ListType([_to_cel(item) for item in value])
    return json_to_cel(value)


def _run(text: str, variables: dict[str, Any]) -> Any:
    program = compile_expression(text)
    try:
        return program.evaluate({name: _to_cel(value) for name, value in variables.items()})
    except _OutOfSteps:
        raise ExpressionError(
            f"{text!r} needed more than {MAX_STEPS:,} evaluation steps "
            f"(the limit, counting every macro iteration); simplify it or "
            f"compute the value before sending it"
        ) from None
    except RecursionError:  # data nested deeper than the evaluator can walk
        raise ExpressionError(
            f"{text!r} could not be evaluated: its data nests too deeply"
        ) from None
    except Exception as exc:  # CEL reports missing keys, bad overloads, ... as exceptions
        reason = exc.args[0] if isinstance(exc, CELEvalError) and exc.args else exc
        raise ExpressionError(f"{text!r} could not be evaluated: {reason}") from None


def check(text: str, names: Iterable[str]) -> None:
    """Compile `text` and make sure it reads only the variables `names` (so `inptu.x` is
    refused when it is registered, not found out at run time)."""
    compile_expression(text)
    allowed = set(names)
    unknown = sorted(_free_names(text) - allowed)
    if unknown:
        raise ExpressionError(
            f"{text!r} reads {', '.join(map(repr, unknown))}, which "
            f"{'is' if len(unknown) == 1 else 'are'} not defined here; "
            f"it may use {', '.join(sorted(allowed))}"
        )


@lru_cache(maxsize=4096)
def _free_names(text: str) -> frozenset[str]:
    """The variables an expression reads: identifiers that are not function names, minus the
    ones its macros bind (`v` in `list.exists(v, v > 1)`)."""
    tree = _ENVIRONMENT.compile(text)
    used: set[str] = set()
    bound: set[str] = set()
    for node in tree.iter_subtrees():
        if node.data == "primary":
            for child in node.children:
                if isinstance(child, Tree) and child.data == "ident":
                    used.update(str(token) for token in child.children if isinstance(token, Token))
        elif node.data == "member_dot_arg" and len(node.children) >= 3:
            method, arguments = node.children[1], node.children[2]
            if str(method) in _MACROS and isinstance(arguments, Tree) and arguments.children:
                first = arguments.children[0]
                bound.update(
                    str(token)
                    for token in first.scan_values(
                        lambda value: isinstance(value, Token) and value.type == "IDENT"
                    )
                )
    return frozenset(used - bound)


def holds(text: str, variables: dict[str, Any]) -> bool:
    """Evaluate a boolean expression over JSON-like variables."""
    result = _run(text, variables)
    if not isinstance(result, celpy.celtypes.BoolType):
        raise ExpressionError(f"{text!r} must be true or false, not {type(result).__name__}")
    return bool(result)


def evaluate(text: str, variables: dict[str, Any]) -> Any:
    """The value of an expression over JSON-like variables, as plain Python (str, int, float,
    bool, None, list, dict). A plain field path (`input.user.id`) is read directly: the same
    answer as CEL's, at a fraction of the cost, for the most common keys."""
    if _PATH.fullmatch(text):
        name, *fields = text.split(".")
        if name in variables:
            value = variables[name]
            for position, field in enumerate(fields):
                if not isinstance(value, dict) or field not in value:
                    path = ".".join([name, *fields[:position]])
                    raise ExpressionError(
                        f"{text!r} could not be evaluated: {path} has no field {field!r}"
                    )
                value = value[field]
            return value
    return _plain(_run(text, variables))


def _plain(value: Any) -> Any:
    if isinstance(value, celpy.celtypes.BoolType):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bytes):
        return bytes(value).decode(errors="replace")
    if isinstance(value, dict):
        return {str(_plain(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return None if value is None else str(value)


def key_text(value: Any) -> str:
    """A key's value as the text that names its group or bucket: strings as they are, other
    values as JSON (`7`, `true`, `[1,2]`)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True)
