"""A sign-up drip campaign as one durable task: send a welcome email, wait seven days or until the
user upgrades (whichever comes first), then send a thank-you or a nudge.

The wait holds no worker slot, survives worker and engine restarts, and ends on schedule (the
wake-up time is stored, not recomputed); `ctx.memo` makes sure no retry sends an email twice.

    uv run taskyard engine                               # terminal 1: the engine
    uv run python examples/drip_campaign.py worker       # terminal 2: a worker
    DRIP_WAIT=5s uv run python examples/drip_campaign.py demo   # terminal 3: two users sign up

In `demo`, Ana upgrades a second after signing up and gets a thank-you at once; Ben does not, and
gets a nudge when the wait (7 days, or DRIP_WAIT) is over.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from pydantic import BaseModel

from taskyard_sdk import DurableContext, Event, Or, Sleep, Taskyard

ty = Taskyard()
WAIT = os.environ.get("DRIP_WAIT", "7d")
EMAILS = Path(os.environ.get("DRIP_EMAILS", "drip-emails.jsonl"))


class NewUser(BaseModel):
    user_id: int
    email: str


def send_email(to: str, subject: str) -> str:
    """Stands in for the email provider's API: appends to a file, one line per email sent."""
    with EMAILS.open("a") as outbox:
        outbox.write(json.dumps({"to": to, "subject": subject}) + "\n")
    return subject


@ty.durable_task(retries=3)
async def drip(user: NewUser, ctx: DurableContext) -> list[str]:
    sent = [await ctx.memo("welcome", send_email, user.email, "Welcome to Acme!")]
    outcome = await ctx.wait_for(
        Or(Sleep(WAIT), Event("user:upgraded", filter="payload.user_id == input.user_id"))
    )
    if outcome.event is not None:
        plan = outcome.event["plan"]
        sent.append(
            await ctx.memo("thanks", send_email, user.email, f"Thanks for upgrading to {plan}!")
        )
    else:
        sent.append(
            await ctx.memo(
                "nudge", send_email, user.email, "Still thinking it over? Here is 20% off."
            )
        )
    return sent


def worker() -> None:
    ty.worker("drip-worker", tasks=[drip], slots=20).start()


async def demo() -> None:
    ana = await drip.aio_run_no_wait(NewUser(user_id=1, email="ana@example.com"))
    ben = await drip.aio_run_no_wait(NewUser(user_id=2, email="ben@example.com"))
    await asyncio.sleep(1)
    await ty.events.aio_push("user:upgraded", {"user_id": 1, "plan": "pro"})
    for name, handle in (("ana", ana), ("ben", ben)):
        emails = await handle.aio_result(timeout=600)
        print(f"{name}: {' / '.join(emails)}")


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "demo"
    if command == "worker":
        worker()
    elif command == "demo":
        asyncio.run(demo())
    else:
        sys.exit(f"usage: {sys.argv[0]} worker|demo")
