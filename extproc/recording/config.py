"""The ``recording:`` section, typed: what is recorded, how sessions are cut, how long
records are kept, where they wait while Redis is away, and who may read them."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from extproc.config.types import Between, Flag, NonEmpty, OneOf, Pattern, Section
from extproc.masking.config import ProfileSpec

__all__ = ["DEFAULT_SPOOL_PATH", "MODES", "AuditorSettings", "RecordingSection", "RetentionSettings", "SpoolSettings"]

MODES: tuple[str, ...] = ("required", "best_effort")
DEFAULT_SPOOL_PATH = ".run/recording-spool.jsonl"


class RetentionSettings(Section):
    #: Entries older than this are trimmed (``XTRIM MINID``); 0 = no age limit.
    max_age_hours: Annotated[int, Between(0, 10 * 365 * 24)] = 168
    #: At most about this many entries are kept (``XTRIM MAXLEN ~``); 0 = no size limit.
    max_entries: Annotated[int, Between(0, 1_000_000_000)] = 100_000


class SpoolSettings(Section):
    #: ``best_effort`` only: where entries wait while Redis is unreachable (JSON lines).
    path: NonEmpty = DEFAULT_SPOOL_PATH
    max_bytes: Annotated[int, Between(0, 1 << 40)] = 64 * 1024 * 1024


class AuditorSettings(Section):
    """Who may read records over the admin API. Empty (the default) means nobody."""

    groups: tuple[NonEmpty, ...] = ()
    users: tuple[NonEmpty, ...] = ()


class RecordingSection(Section):
    """The ``recording:`` section."""

    enabled: Flag = True
    #: ``required``: no record, no request (503). ``best_effort``: spool locally, flush later.
    mode: Annotated[str, OneOf(MODES)] = "required"
    session_header: Annotated[str, Pattern(r"[a-z0-9][a-z0-9-]{0,63}",
                                           "must be a lower-case HTTP header name like x-session-id")] = "x-session-id"
    session_gap_seconds: Annotated[int, Between(1, 7 * 86400)] = 1800
    max_body_bytes: Annotated[int, Between(0, 16 * 1024 * 1024)] = 256 * 1024
    max_chunks: Annotated[int, Between(1, 100_000)] = 2000
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    spool: SpoolSettings = Field(default_factory=SpoolSettings)
    #: The masking profile applied to recorded text; every built-in detector when left out.
    masking: ProfileSpec | None = None
    auditors: AuditorSettings = Field(default_factory=AuditorSettings)
