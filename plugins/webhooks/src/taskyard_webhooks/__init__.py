"""Taskyard plugin `webhooks`: `POST /api/v1/webhooks/{name}` turns a signed request into an
event, which triggers workflows and wakes waits like any other.

    taskyard engine --plugin webhooks

Webhooks are declared in a YAML file, `<data-dir>/webhooks.yaml` (or TASKYARD_WEBHOOKS_FILE),
read again whenever it changes:

    github:
      event: github:push                  # the event key the body becomes
      secret_env: GITHUB_WEBHOOK_SECRET   # or `secret: ...` inline
      tenant: default                     # the tenant it goes to (default: "default")

The sender signs the raw body with HMAC-SHA256 and the webhook's secret, hex-encoded, in
`X-Taskyard-Signature: sha256=<hex>` (GitHub's `X-Hub-Signature-256` is accepted too). A missing
or wrong signature is a 401 and nothing is stored; the body must be JSON (it becomes the event's
payload; `metadata.webhook` names the webhook).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml
from pydantic import BaseModel

from taskyard.plugins import ApiError, Call, Router, hookimpl, host_of

SIGNATURE_HEADERS = ("X-Taskyard-Signature", "X-Hub-Signature-256")
log = logging.getLogger(__name__)


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class BadRequest(ApiError):
    status = 400
    code = "bad_request"


@dataclass(frozen=True)
class Webhook:
    name: str
    event: str
    secret: bytes
    tenant: str


class Delivered(BaseModel):
    event_id: str
    triggered: list[str]


class WebhookFile:
    """The declarations, read again when the file's modification time changes. A change that
    does not parse is logged and the last good declarations stay in use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: float | None = None
        self._hooks: dict[str, Webhook] = {}

    def get(self, name: str) -> Webhook | None:
        try:
            stamp = self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._hooks = _parse(self.path)
            except (ValueError, yaml.YAMLError) as exc:
                log.error(
                    "webhooks file %s not loaded (the last good one stays): %s", self.path, exc
                )
        return self._hooks.get(name)


def _parse(path: Path) -> dict[str, Webhook]:
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of webhook names")
    hooks = {}
    for name, spec in data.items():
        if not isinstance(spec, dict) or "event" not in spec:
            raise ValueError(f"{path}: webhook {name!r} needs an `event` key")
        secret = spec.get("secret")
        if secret is None and "secret_env" in spec:
            secret = os.environ.get(str(spec["secret_env"]))
        if not secret:
            raise ValueError(
                f"{path}: webhook {name!r} has no secret (set `secret` or "
                f"`secret_env` to a variable that is set)"
            )
        hooks[str(name)] = Webhook(
            str(name), str(spec["event"]), str(secret).encode(), str(spec.get("tenant", "default"))
        )
    return hooks


_files: dict[Path, WebhookFile] = {}


def _webhooks(call: Call[Any]) -> WebhookFile:
    host = host_of(call)
    path = Path(
        os.environ.get("TASKYARD_WEBHOOKS_FILE") or Path(host.settings.data_dir) / "webhooks.yaml"
    )
    return _files.setdefault(path, WebhookFile(path))


def signature_of(secret: bytes, body: bytes) -> str:
    """What a sender puts in X-Taskyard-Signature."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


@hookimpl
def taskyard_routes(router: Router) -> None:
    @router.post("/api/v1/webhooks/{name}", roles=None, response=Delivered, status=202)
    async def receive(call: Call[None]) -> Delivered:
        """Receive a signed webhook: its JSON body becomes an event (see the plugin's docs)."""
        name = call.path["name"]
        webhook = _webhooks(call).get(name)
        if webhook is None:
            raise NotFound(f"no webhook named {name!r}")
        body = await call.request.read()
        given = next(
            (call.request.headers[h] for h in SIGNATURE_HEADERS if h in call.request.headers), None
        )
        if given is None:
            raise Unauthorized(
                f"webhook {name!r} needs an X-Taskyard-Signature header: "
                f"sha256=<hex HMAC-SHA256 of the body with the webhook's secret>"
            )
        if not hmac.compare_digest(
            given.strip().encode(errors="replace"), signature_of(webhook.secret, body).encode()
        ):
            raise Unauthorized(f"webhook {name!r}: the signature does not match the body")
        try:
            payload = orjson.loads(body) if body else None
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"webhook {name!r}: the body is not JSON: {exc}") from None
        pushed = await host_of(call).push_event(
            webhook.tenant, webhook.event, payload, {"webhook": name}
        )
        return Delivered(
            event_id=str(pushed.event_id), triggered=[str(run) for run in pushed.triggered]
        )


__all__ = ["signature_of", "taskyard_routes"]
