"""Taskyard plugin `slack`: failure alerts in Slack, posted with slack-sdk.

    taskyard engine --plugin slack

Configured from the environment: TASKYARD_SLACK_TOKEN (a bot token, for `chat.postMessage`),
TASKYARD_SLACK_API_URL (the Web API's base URL; default Slack's own, https://slack.com/api/), or
TASKYARD_SLACK_WEBHOOK_URL (an incoming webhook, instead of a token). An alert rule's target names
the channel for the token: `{"channel": "#ops"}`; with a webhook the target may be empty.
"""

from __future__ import annotations

import os
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from taskyard.plugins import Alert, hookimpl

DEFAULT_API_URL = "https://slack.com/api/"


class SlackChannel:
    """The `slack` alert channel."""

    name = "slack"

    def __init__(
        self, token: str | None = None, api_url: str | None = None, webhook_url: str | None = None
    ) -> None:
        self.token = token or os.environ.get("TASKYARD_SLACK_TOKEN") or None
        self.api_url = api_url or os.environ.get("TASKYARD_SLACK_API_URL") or DEFAULT_API_URL
        self.webhook_url = webhook_url or os.environ.get("TASKYARD_SLACK_WEBHOOK_URL") or None

    def check_target(self, target: dict[str, Any]) -> None:
        if self.token is None and self.webhook_url is None:
            raise ValueError(
                "the slack channel needs TASKYARD_SLACK_TOKEN or "
                "TASKYARD_SLACK_WEBHOOK_URL in the engine's environment"
            )
        if self.webhook_url is None and not isinstance(target.get("channel"), str):
            raise ValueError('the slack channel needs {"channel": "#channel-name"}')

    async def send(self, alert: Alert, target: dict[str, Any]) -> None:
        await self.post(alert.text, channel=target.get("channel"), title=alert.title)

    async def post(self, text: str, *, channel: str | None, title: str | None = None) -> None:
        blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
        if title:
            blocks.insert(
                0, {"type": "header", "text": {"type": "plain_text", "text": title[:150]}}
            )
        if self.webhook_url is not None and (channel is None or self.token is None):
            response = await AsyncWebhookClient(self.webhook_url).send(text=text, blocks=blocks)
            if response.status_code >= 300:
                raise RuntimeError(
                    f"Slack webhook answered {response.status_code}: {response.body}"
                )
            return
        client = AsyncWebClient(token=self.token, base_url=self.api_url)
        await client.chat_postMessage(channel=channel or "", text=text, blocks=blocks)


class SlackPostMessage:
    """The `slack:post-message` action: `{"channel": "#ops", "text": ...}`."""

    name = "slack:post-message"

    def __init__(self, channel: SlackChannel | None = None) -> None:
        self.slack = channel or SlackChannel()

    def check(self, params: dict[str, Any]) -> None:
        self.slack.check_target(params)
        if not isinstance(params.get("text"), str):
            raise ValueError("slack:post-message needs `text`")

    async def run(self, params: dict[str, Any]) -> dict[str, Any]:
        self.check(params)
        await self.slack.post(params["text"], channel=params.get("channel"))
        return {"posted": True}


@hookimpl
def taskyard_alert_channels() -> list[SlackChannel]:
    return [SlackChannel()]


@hookimpl
def taskyard_actions() -> list[SlackPostMessage]:
    return [SlackPostMessage()]
