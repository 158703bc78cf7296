"""Rate-limited LLM calls with per-user fairness.

An LLM provider allows so many tokens a minute across the whole account; one heavy user must not
starve everyone else, and no user may send more than a few requests a minute. Three rules on one
task do it, all decided in the engine's memory:

- `RateLimit(key="llm-tokens", units="input.max_tokens")`: every call takes its token budget
  from the account-wide limit (`ty.rate_limits.put("llm-tokens", ...)`); calls wait in the queue
  when the minute's tokens are spent, they do not fail.
- `RateLimit(dynamic_key="'user:' + input.user_id", limit=30, duration="minute")`: a bucket per
  user, made on the fly.
- `Concurrency(expression="input.user_id", max_runs=1)`: one call per user at a time, users
  taking turns (round-robin), so a user with a long backlog waits behind the others' next call.

    uv run taskyard engine                               # terminal 1: the engine
    uv run python examples/llm_fairness.py worker        # terminal 2: a worker
    uv run python examples/llm_fairness.py demo          # terminal 3: a busy user and two others

The "model" here is a stand-in that sleeps like a slow API; swap in your provider's client.
"""

from __future__ import annotations

import asyncio
import sys

from pydantic import BaseModel

from taskyard_sdk import Concurrency, Context, RateLimit, Taskyard

ty = Taskyard()


class Prompt(BaseModel):
    user_id: str
    text: str
    max_tokens: int = 500


class Completion(BaseModel):
    user_id: str
    summary: str
    tokens: int


@ty.task(
    rate_limits=[
        RateLimit(key="llm-tokens", units="input.max_tokens"),
        RateLimit(dynamic_key="'user:' + input.user_id", limit=30, duration="minute"),
    ],
    concurrency=Concurrency(expression="input.user_id", max_runs=1),
    retries=3,
    backoff_factor=2,
)
async def summarize(prompt: Prompt, ctx: Context) -> Completion:
    await asyncio.sleep(0.05)  # the provider thinking
    words = prompt.text.split()
    ctx.log(f"summarised {len(words)} words for {prompt.user_id}")
    return Completion(
        user_id=prompt.user_id,
        summary=" ".join(words[:3]) + " ...",
        tokens=min(prompt.max_tokens, 10 * len(words)),
    )


def worker() -> None:
    ty.worker("llm-worker", tasks=[summarize], slots=8).start()


async def demo() -> None:
    await ty.rate_limits.aio_put("llm-tokens", limit=200_000, duration="minute")
    # The busy user's twelve requests are queued first, then two other users ask once each...
    prompts = [Prompt(user_id="busy", text=f"report number {n} " * 20) for n in range(12)]
    prompts += [
        Prompt(user_id=user, text=f"a short note from {user} " * 5)
        for user in ("ana", "ben")
        for _ in range(3)
    ]
    handles = await summarize.aio_run_many_no_wait(prompts)
    finished: list[str] = []

    async def wait(handle: object) -> None:
        result = await handle.aio_result(timeout=60)  # type: ignore[attr-defined]
        finished.append(result.user_id)

    await asyncio.gather(*(wait(handle) for handle in handles))
    # ... and are served in turn: each of them is done before the busy user's backlog is.
    for user in ("ana", "ben"):
        print(
            f"{user}: last of 3 calls done as call {max_position(finished, user)} of "
            f"{len(finished)}"
        )
    print(
        f"busy: last of 12 calls done as call {max_position(finished, 'busy')} of {len(finished)}"
    )
    tokens = await ty.rate_limits.aio_get("llm-tokens")
    print(f"llm-tokens: {tokens.used} of {tokens.limit} this minute")


def max_position(finished: list[str], user: str) -> int:
    return max(index for index, who in enumerate(finished, 1) if who == user)


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "demo"
    if command == "worker":
        worker()
    elif command == "demo":
        asyncio.run(demo())
    else:
        sys.exit(f"usage: {sys.argv[0]} worker|demo")
