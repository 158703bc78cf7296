"""A sign-up workflow triggered by an event: create the new user's resources, then greet them and
(if they opted in) add them to the newsletter, in parallel.

    uv run taskyard engine                                   # terminal 1: the engine
    uv run python examples/signup_workflow.py worker         # terminal 2: a worker
    uv run python examples/signup_workflow.py signup         # terminal 3: a user signs up

`signup` pushes a `user:create` event, as a web application would after creating the account; the
engine starts a `post-signup` run for it and the script waits for the outcome.

        create_resources
          /          \\
       greet    add_to_newsletter   (skipped unless the user opted in)
"""

from __future__ import annotations

import asyncio
import sys

from pydantic import BaseModel

from taskyard_sdk import Context, Taskyard

ty = Taskyard()


class Signup(BaseModel):
    user_id: int
    name: str
    email: str
    plan: str = "free"
    newsletter: bool = False


class Workspace(BaseModel):
    workspace_id: str
    storage_quota_gb: int


class Email(BaseModel):
    to: str
    subject: str
    body: str


signup = ty.workflow("post-signup", input=Signup, on_events=["user:create"])


@signup.task(retries=3, backoff_factor=2)
async def create_resources(user: Signup, ctx: Context) -> Workspace:
    """Provision what the account needs (here: a workspace sized by plan)."""
    quota = {"free": 5, "pro": 100}.get(user.plan, 5)
    ctx.log(f"creating a {quota} GB workspace for user {user.user_id}")
    return Workspace(workspace_id=f"ws-{user.user_id:06d}", storage_quota_gb=quota)


@signup.task(parents=[create_resources], retries=5)
async def greet(user: Signup, ctx: Context) -> Email:
    workspace = ctx.parent_output(create_resources)
    return Email(
        to=user.email,
        subject=f"Welcome to Acme, {user.name}!",
        body=f"Your workspace {workspace.workspace_id} has "
        f"{workspace.storage_quota_gb} GB waiting for you.",
    )


@signup.task(parents=[create_resources], skip_if="input.newsletter == false")
def add_to_newsletter(user: Signup) -> str:
    """Sync steps run on the worker's thread pool (e.g. a blocking mailing-list client)."""
    return f"subscribed {user.email}"


@signup.on_failure_task()
async def tell_support(user: Signup, ctx: Context) -> str:
    failed = ", ".join(f"{step}: {error.message}" for step, error in ctx.failures.items())
    ctx.log(f"sign-up of user {user.user_id} needs a human: {failed}", level="error")
    return failed


def worker() -> None:
    ty.worker("signup-worker", workflows=[signup], slots=20).start()


async def sign_up(user: Signup) -> None:
    event = await ty.events.aio_push("user:create", user.model_dump(), metadata={"source": "web"})
    [run_id] = event.triggered
    view = (await ty.runs.aio_wait([run_id], timeout=60))[run_id]
    print(f"{user.name}: run {view.status.value}")
    outputs = view.output or {}
    print(f"  workspace: {outputs['create_resources']['workspace_id']}")
    print(f"  email: {outputs['greet']['subject']}")
    print(f"  newsletter: {outputs.get('add_to_newsletter') or 'skipped'}")


async def main() -> None:
    await signup.aio_register()  # the worker registers it too; the same definition is one version
    await sign_up(
        Signup(user_id=7, name="Ada", email="ada@example.com", plan="pro", newsletter=True)
    )
    await sign_up(Signup(user_id=8, name="Grace", email="grace@example.com"))
    # Or run the workflow directly, with typed outputs:
    outputs = await signup.aio_run(Signup(user_id=9, name="Linus", email="linus@example.com"))
    print(f"direct: {outputs['greet'].body}")


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "signup"
    if command == "worker":
        worker()
    elif command == "signup":
        asyncio.run(main())
    else:
        sys.exit(f"usage: {sys.argv[0]} worker|signup")
