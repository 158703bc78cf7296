"""Back-off between retries: grows by `backoff_factor` per retry, capped by
`backoff_max_seconds`; a delay the task asked for (RetryAfter) wins."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from taskyard.domain.runs import retry_delay
from taskyard_sdk.models import TaskOptions


def test_the_delay_grows_by_the_factor_until_the_cap() -> None:
    options = TaskOptions(retries=6, backoff_factor=2, backoff_max_seconds=20)
    assert [retry_delay(options, n, None) for n in range(1, 7)] == [2, 4, 8, 16, 20, 20]


def test_no_factor_retries_at_once_and_a_requested_delay_wins() -> None:
    assert retry_delay(TaskOptions(retries=3), 2, None) == 0
    options = TaskOptions(retries=3, backoff_factor=2, backoff_max_seconds=60)
    assert retry_delay(options, 1, 42.5) == 42.5
    assert retry_delay(options, 1, 600) == 60


@given(
    factor=st.floats(min_value=1.0, max_value=100.0),
    cap=st.floats(min_value=0.001, max_value=86_400.0),
    retry=st.integers(min_value=1, max_value=1000),
)
def test_delays_never_shrink_and_never_pass_the_cap(factor: float, cap: float, retry: int) -> None:
    options = TaskOptions(retries=1000, backoff_factor=factor, backoff_max_seconds=cap)
    delay = retry_delay(options, retry, None)
    assert 0 <= delay <= cap
    assert retry_delay(options, retry + 1, None) >= delay
