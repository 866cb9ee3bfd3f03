"""The ``approvals:`` section, typed: how long requests are held, who may approve which
policy rule's requests, and where notifications go."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, ConfigDict, Field, model_validator

from extproc.config.types import Between, Invalid, Names, NumberBetween, OneOf, Pattern, Section

__all__ = ["GRANT_MODES", "HOLD_GRACE_SECONDS", "WEBHOOK_FORMATS", "ApprovalsSection", "ApproverSpec",
           "Webhook"]

GRANT_MODES: tuple[str, ...] = ("once", "window")
WEBHOOK_FORMATS: tuple[str, ...] = ("generic", "slack")
#: Seconds a held request's message timeout is extended beyond the hold itself.
HOLD_GRACE_SECONDS = 5

RuleKey = Annotated[str, Pattern(r"\*|[A-Za-z0-9][A-Za-z0-9._-]{0,63}",
                                 "must be a policy rule id (letters, digits, '.', '_', '-') or '*'")]


def _dedupe(names: tuple[str, ...]) -> tuple[str, ...]:
    for i, name in enumerate(names):
        if not name.strip():
            raise Invalid(f"must be a non-empty string, got {name!r}", i)
    return tuple(dict.fromkeys(names))


Approvers = Annotated[Names, AfterValidator(_dedupe)]


class ApproverSpec(Section):
    """Who may approve requests held by one policy rule, and how many must."""

    groups: Approvers = ()
    users: Approvers = ()
    quorum: Annotated[int, Between(1, 10)] = 1

    @model_validator(mode="after")
    def _someone(self) -> ApproverSpec:
        if not self.groups and not self.users:
            raise Invalid("names no approvers: set 'groups', 'users' or both")
        if not self.groups and self.quorum > len(self.users):
            raise Invalid(f"is {self.quorum} but only {len(self.users)} user(s) may approve", "quorum")
        return self


def _hook_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid("must be an http:// or https:// URL with a host")
    return url


class Webhook(Section):
    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": ["url"]}, {"required": ["url_env"]}]})

    #: The URL, or None when it comes from the environment (``url_env``): Slack incoming-
    #: webhook URLs are credentials and do not belong in a committed file.
    url: Annotated[str, AfterValidator(_hook_url)] | None = None
    url_env: Annotated[str, Pattern(r"[A-Za-z_][A-Za-z0-9_]*", "must be an environment variable name")] | None = None
    format: Annotated[str, OneOf(WEBHOOK_FORMATS)] = "generic"
    timeout_seconds: Annotated[float, NumberBetween(0.1, 60.0)] = 5.0
    retries: Annotated[int, Between(0, 10)] = 3

    @model_validator(mode="after")
    def _one(self) -> Webhook:
        if (self.url is None) == (self.url_env is None):
            raise Invalid("set exactly one of 'url' and 'url_env'")
        return self

    def resolve_url(self, env: Mapping[str, str]) -> str | None:
        """The URL; ``env`` is the process environment, passed in (this model reads no globals)."""
        if self.url:
            return self.url
        if self.url_env:
            return env.get(self.url_env) or None
        return None

    def describe(self) -> str:
        """Safe for logs: scheme and host only (the path of a Slack URL is its secret)."""
        if self.url:
            parts = urlsplit(self.url)
            return f"{parts.scheme}://{parts.hostname}"
        return f"${self.url_env}"


class ApprovalsSection(Section):
    """The ``approvals:`` section. ``hold_seconds`` must also fit under
    ``envoy.max_message_timeout_seconds`` (checked with the whole file)."""

    #: How long the data path holds a request waiting for a decision.
    hold_seconds: Annotated[int, Between(1, 3600)] = 120
    #: How long a request stays approvable (a caller may retry after the hold ran out).
    ttl_seconds: Annotated[int, Between(1, 7 * 86400)] = 900
    grant: Annotated[str, OneOf(GRANT_MODES)] = "once"
    grant_window_seconds: Annotated[int, Between(1, 30 * 86400)] = 3600
    #: Policy rule id (or ``*`` for any) -> its approvers.
    rules: Mapping[RuleKey, ApproverSpec] = Field(default_factory=dict)
    webhooks: tuple[Webhook, ...] = ()

    @model_validator(mode="after")
    def _ttl_covers_hold(self) -> ApprovalsSection:
        if self.ttl_seconds < self.hold_seconds:
            raise Invalid(f"must be at least hold_seconds ({self.hold_seconds}), or a request expires while it "
                          "is held", "ttl_seconds")
        return self
