"""Webhook notifications for approvals: someone must learn that a request is waiting.

``Notifier.notify`` never blocks and never raises: each delivery runs in a background task
with retries and exponential backoff, and a webhook that stays down only costs a log line
and a counter. The approval itself lives in Redis and is decided over the admin API either
way; a notification is a convenience, not part of the approval's correctness.

Payloads never carry the request body (the record only holds its digest anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import random
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from extproc.approvals.model import Approval, Webhook

__all__ = ["Notifier", "PostFn", "generic_payload", "post_json", "slack_payload"]

log = logging.getLogger("extproc.notify")

#: ``(url, json body, timeout) -> HTTP status``; raises ``OSError`` when nothing answered.
PostFn = Callable[[str, bytes, float], Awaitable[int]]

#: Deliveries in flight or waiting to retry; past this, new ones are dropped (and counted)
#: rather than growing memory without bound while a webhook is down.
MAX_QUEUED = 1000


def _post_sync(url: str, body: bytes, timeout: float) -> int:
    req = urllib.request.Request(  # noqa: S310 - the scheme is checked by ApprovalSettings
        url, data=body, method="POST", headers={"content-type": "application/json", "user-agent": "extproc"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            resp.read(65536)
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


async def post_json(url: str, body: bytes, timeout: float) -> int:
    """POST with stdlib urllib in a worker thread (no extra dependency, never blocks the loop)."""
    return await asyncio.to_thread(_post_sync, url, body, timeout)


def _slack_escape(text: str) -> str:
    # Slack mrkdwn control characters; without this a user name or reason could ping
    # ``<!channel>`` or forge a link.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def slack_payload(event: str, a: Approval) -> dict[str, Any]:
    """A Slack incoming-webhook message (``{"text": ...}``)."""
    b, e = a.binding, _slack_escape
    who = e(a.requester.user) + (f" ({e(a.requester.workload)})" if a.requester.workload else "")
    if event == "created":
        approvers = ", ".join([*(f"group {g}" for g in a.approvers.groups), *(f"user {u}" for u in a.approvers.users)])
        text = (
            f":hourglass: *Approval needed* `{a.id}`\n"
            f"*{who}* wants `{e(b.provider)}{e(b.route)}` (policy rule `{e(b.rule_id)}`)\n"
            f"Approvers: {e(approvers)}; {a.quorum} approval(s) needed; expires {_when(a.expires_at)}\n"
            f"Approve: `extproc approvals approve {a.id}`   "
            f"Deny: `extproc approvals deny {a.id} --reason \"...\"`"
        )
    else:
        last = a.decisions[-1] if a.decisions else None
        by = f" by *{e(last.approver.user)}*" if last is not None else ""
        reason = f": {e(last.reason)}" if last is not None and last.reason else ""
        icon = ":white_check_mark:" if a.state == "approved" else ":no_entry:"
        text = f"{icon} `{a.id}` for *{who}* (rule `{e(b.rule_id)}`) was *{a.state}*{by}{reason}"
    return {"text": text}


def generic_payload(event: str, a: Approval) -> dict[str, Any]:
    """The event name and the approval record (which never holds the request body)."""
    return {"event": event, "approval": a.to_dict()}


class Notifier:
    def __init__(
        self,
        webhooks: Sequence[Webhook],
        *,
        post: PostFn | None = None,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._hooks = tuple(webhooks)
        self._post = post or post_json
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._env: Mapping[str, str] = os.environ if env is None else env
        self._tasks: set[asyncio.Task[None]] = set()
        #: The latest delivery per (webhook, approval): the next one waits for it, so a
        #: receiver sees "created" before "decided" for the same approval.
        self._chains: dict[tuple[int, str], asyncio.Task[None]] = {}
        #: Counters for metrics and tests.
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    @property
    def webhooks(self) -> tuple[Webhook, ...]:
        return self._hooks

    def notify(self, event: str, approval: Approval) -> None:
        """Schedule delivery of ``event`` to every webhook; returns at once. Needs a running loop."""
        for index, hook in enumerate(self._hooks):
            if len(self._tasks) >= MAX_QUEUED:
                self.dropped += 1
                log.warning("approval notification dropped (%d deliveries queued): %s", MAX_QUEUED, approval.id)
                continue
            payload = slack_payload(event, approval) if hook.format == "slack" else generic_payload(event, approval)
            body = json.dumps(payload, separators=(",", ":")).encode()
            key = (index, approval.id)
            task = asyncio.get_running_loop().create_task(
                self._deliver_after(self._chains.get(key), hook, body, approval.id, event)
            )
            self._chains[key] = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(functools.partial(self._unchain, key))

    async def drain(self, timeout: float | None = None) -> None:
        """Wait for the deliveries in flight (tests, and a graceful shutdown)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    async def close(self, grace: float = 2.0) -> None:
        """Give deliveries ``grace`` seconds, then cancel what is left."""
        await self.drain(grace)
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await t

    def _unchain(self, key: tuple[int, str], task: asyncio.Task[None]) -> None:
        if self._chains.get(key) is task:
            del self._chains[key]

    async def _deliver_after(self, previous: asyncio.Task[None] | None, hook: Webhook, body: bytes,
                             approval_id: str, event: str) -> None:
        if previous is not None:
            # wait() neither raises the previous delivery's error nor swallows our own cancel.
            await asyncio.wait({previous})
        await self._deliver(hook, body, approval_id, event)

    async def _deliver(self, hook: Webhook, body: bytes, approval_id: str, event: str) -> None:
        url = hook.resolve_url(self._env)
        if url is None:
            self.failed += 1
            log.warning("approval webhook %s has no URL (environment variable unset)", hook.describe())
            return
        attempts = hook.retries + 1
        why = ""
        tried = 0
        for attempt in range(attempts):
            tried += 1
            try:
                status = await self._post(url, body, hook.timeout_seconds)
            except (OSError, TimeoutError, ValueError) as exc:  # URLError is an OSError
                why = type(exc).__name__
            else:
                if 200 <= status < 300:
                    self.delivered += 1
                    return
                why = f"HTTP {status}"
                if 400 <= status < 500 and status not in (408, 429):
                    break  # the request itself is wrong; repeating it cannot help
            if attempt + 1 < attempts:
                delay = min(self._backoff_max, self._backoff_base * (2**attempt))
                # Jitter, so many replicas retrying one webhook do not hit it in lockstep.
                delay *= 0.5 + random.random() / 2  # noqa: S311 - not security relevant
                await asyncio.sleep(delay)
        self.failed += 1
        log.warning(
            "approval webhook %s failed for %s (%s) after %d attempt(s): %s",
            hook.describe(), approval_id, event, tried, why,
        )
