"""Every CEL expression is bounded (docs/security.md): length, syntax depth, macro nesting at
compile time, and steps at evaluation. What exceeds a bound is refused naming it, and the engine
keeps serving every tenant while it refuses."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskyard.domain import expressions
from taskyard.domain.expressions import ExpressionError, evaluate
from taskyard_sdk import InvalidRequest, Taskyard

TWENTY = list(range(20))
# The shape of the expression that froze the engine for 100 s: four nested maps over lists.
FOUR_MAPS = (
    "input.l.map(a, input.l.map(b, input.l.map(c, input.l.map(d, "
    "a + b + c + d)))).size() > 0 ? 'k' : 'j'"
)


def test_each_compile_time_bound_is_refused_naming_it() -> None:
    refused = {
        "x" * (expressions.MAX_LENGTH + 1): "an expression may have at most 1,000",
        "(" * 30 + "1" + ")" * 30: "its syntax may be at most",
        "+".join(["1"] * 200): "its syntax may be at most",
        FOUR_MAPS: "macros (all, exists, exists_one, map, filter) may nest 2 deep at most",
        "[1, 2].reduce(a, x, a + x, 0)": "calls reduce(), which is not part of CEL",
    }
    for text, message in refused.items():
        with pytest.raises(ExpressionError, match=message.replace("(", r"\(").replace(")", r"\)")):
            evaluate(text, {"input": {"l": TWENTY}})


def test_evaluation_stops_at_its_step_budget() -> None:
    two_maps = "input.l.map(x, input.l.map(y, x + y)).size()"
    assert evaluate(two_maps, {"input": {"l": [1, 2, 3]}}) == 3
    with pytest.raises(ExpressionError, match="needed more than 500 evaluation steps"):
        evaluate(two_maps, {"input": {"l": TWENTY}})
    # An error value swallowed by `||` does not hide a spent budget.
    with pytest.raises(ExpressionError, match="evaluation steps"):
        evaluate(f"{two_maps} > 0 || true", {"input": {"l": TWENTY}})


_LIST = st.sampled_from(["input.l", "input.m", "[1, 2, 3]", "input.l + input.l"])
_SCALAR = st.sampled_from(["1", "x", "y", "size(input.s)", "input.n", "'a'"])


def _expression() -> st.SearchStrategy[str]:
    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        macro = st.tuples(
            _LIST,
            st.sampled_from(["map", "filter", "exists", "all", "exists_one"]),
            st.sampled_from(["x", "y"]),
            inner,
        ).map(lambda p: f"{p[0]}.{p[1]}({p[2]}, {p[3]})")
        binary = st.tuples(inner, st.sampled_from(["+", "*", "==", "<", "&&", "||"]), inner).map(
            lambda p: f"({p[0]} {p[1]} {p[2]})"
        )
        sized = macro.map(lambda text: f"size({text})")
        return st.one_of(macro, binary, sized)

    return st.recursive(_SCALAR, extend, max_leaves=12)


@settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(text=_expression(), length=st.integers(0, 200), text_size=st.integers(0, 5_000))
def test_no_expression_runs_long_whatever_its_data(text: str, length: int, text_size: int) -> None:
    data = {
        "input": {
            "l": list(range(length)),
            "m": [[i] * 5 for i in range(length)],
            "s": "s" * text_size,
            "n": length,
        }
    }
    started = time.perf_counter()
    with contextlib.suppress(ExpressionError):  # refused, or a bad overload: quickly too
        evaluate(text, data)
    elapsed = time.perf_counter() - started
    # Bounded, the worst of these takes ~20 ms here (up to ~10x that with the suite running
    # beside it); unbounded, they take seconds to minutes.
    assert elapsed < 1.0, (text, length, elapsed)


async def _healthz_while(http: aiohttp.ClientSession, request: Any) -> tuple[Any, float]:
    """Run a request, and meanwhile time /healthz: the loop must stay free."""
    slowest = 0.0
    done = asyncio.Event()

    async def probe() -> None:
        nonlocal slowest
        while not done.is_set():
            started = time.monotonic()
            async with http.get("/healthz") as response:
                assert response.status == 200
            slowest = max(slowest, time.monotonic() - started)
            await asyncio.sleep(0.01)

    prober = asyncio.create_task(probe())
    try:
        result = await request
    finally:
        done.set()
        await prober
    return result, slowest


async def test_a_costly_concurrency_expression_is_refused_with_422_and_others_keep_being_served(
    ty: Taskyard, http: aiohttp.ClientSession
) -> None:
    headers = {"Authorization": f"Bearer {ty.config.token}"}

    async def trigger(expression: str) -> tuple[int, str]:
        body = {
            "task": "t",
            "input": {"l": TWENTY},
            "options": {"concurrency": [{"expression": expression}]},
        }
        async with http.post("/api/v1/runs", json=body, headers=headers) as response:
            return response.status, (await response.json())["error"]["message"]

    (status, message), _ = await _healthz_while(http, trigger(FOUR_MAPS))
    assert status == 422
    assert "concurrency[0].expression" in message
    assert "may nest 2 deep at most" in message
    (status, message), slowest = await _healthz_while(
        http, trigger("input.l.map(x, input.l.map(y, x + y)).size() > 0 ? 'k' : 'j'")
    )
    assert status == 422
    assert "needed more than 500 evaluation steps" in message
    assert slowest < 1.0  # the 100 s freeze this replaces

    wf = ty.workflow("greedy-skip")

    @wf.task(skip_if=FOUR_MAPS)
    async def step(n: int) -> int:
        return n

    with pytest.raises(InvalidRequest, match="may nest 2 deep at most"):
        await wf.aio_register()
