"""Taskyard plugin `email`: failure alerts by email, sent with aiosmtplib.

    taskyard engine --plugin email

Configured from the environment: TASKYARD_SMTP_HOST (default localhost), TASKYARD_SMTP_PORT (25,
or 465 with TLS), TASKYARD_SMTP_STARTTLS / TASKYARD_SMTP_TLS ("true" to use them),
TASKYARD_SMTP_USERNAME and TASKYARD_SMTP_PASSWORD (both, or neither), TASKYARD_SMTP_FROM (the
sender; default taskyard@localhost). An alert rule's target names the recipients:
`{"to": ["ops@acme.test"]}`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import aiosmtplib

from taskyard.plugins import Alert, hookimpl


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    starttls: bool
    tls: bool
    username: str | None
    password: str | None
    sender: str

    @classmethod
    def from_environment(cls) -> SmtpSettings:
        tls = _flag("TASKYARD_SMTP_TLS")
        return cls(
            host=os.environ.get("TASKYARD_SMTP_HOST", "localhost"),
            port=int(os.environ.get("TASKYARD_SMTP_PORT", "465" if tls else "25")),
            starttls=_flag("TASKYARD_SMTP_STARTTLS"),
            tls=tls,
            username=os.environ.get("TASKYARD_SMTP_USERNAME") or None,
            password=os.environ.get("TASKYARD_SMTP_PASSWORD") or None,
            sender=os.environ.get("TASKYARD_SMTP_FROM", "taskyard@localhost"),
        )


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


class EmailChannel:
    """The `email` alert channel."""

    name = "email"

    def __init__(self, settings: SmtpSettings | None = None) -> None:
        self.settings = settings or SmtpSettings.from_environment()

    def check_target(self, target: dict[str, Any]) -> None:
        to = target.get("to")
        if (
            not isinstance(to, list)
            or not to
            or not all(isinstance(address, str) and "@" in address for address in to)
        ):
            raise ValueError('the email channel needs {"to": ["someone@example.com", ...]}')

    async def send(self, alert: Alert, target: dict[str, Any]) -> None:
        await self.send_message(target["to"], alert.title, alert.text)

    async def send_message(self, to: list[str], subject: str, body: str) -> None:
        settings = self.settings
        message = EmailMessage()
        message["From"] = settings.sender
        message["To"] = ", ".join(to)
        message["Subject"] = subject
        message.set_content(body)
        await aiosmtplib.send(
            message,
            hostname=settings.host,
            port=settings.port,
            start_tls=settings.starttls,
            use_tls=settings.tls,
            username=settings.username,
            password=settings.password,
            timeout=30,
        )


class EmailSend:
    """The `email:send` action: `{"to": "a@b.c" or [...], "subject": ..., "body": ...}`."""

    name = "email:send"

    def __init__(self, channel: EmailChannel | None = None) -> None:
        self.channel = channel or EmailChannel()

    def check(self, params: dict[str, Any]) -> None:
        to = params.get("to")
        if isinstance(to, str):
            to = [to]
        self.channel.check_target({"to": to})
        for key in ("subject", "body"):
            if not isinstance(params.get(key), str):
                raise ValueError(f"email:send needs `{key}` as text")

    async def run(self, params: dict[str, Any]) -> dict[str, Any]:
        self.check(params)
        to = [params["to"]] if isinstance(params["to"], str) else list(params["to"])
        await self.channel.send_message(to, params["subject"], params["body"])
        return {"sent_to": to}


@hookimpl
def taskyard_alert_channels() -> list[EmailChannel]:
    return [EmailChannel()]


@hookimpl
def taskyard_actions() -> list[EmailSend]:
    return [EmailSend()]
