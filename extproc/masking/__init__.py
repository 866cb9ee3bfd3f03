"""PII and secret masking: pure, synchronous, no I/O.

``MaskingProfile`` holds compiled detectors and rendering styles; ``mask`` works on a
whole text, ``streaming()`` returns an incremental masker whose output, over any
chunking, concatenates to exactly ``mask(whole_text)``. ``extproc.masking.responses``
builds protocol-aware body maskers (OpenAI, Anthropic, SSE, JSON) on top.
"""

from __future__ import annotations

from extproc.masking.detectors import BUILTIN_ENTITIES, LEFT_CONTEXT, RIGHT_CONTEXT
from extproc.masking.engine import HOLD_MARGIN
from extproc.masking.profile import DENY_LIST_ENTITY, MaskingProfile, default_profile
from extproc.masking.replacement import STYLES
from extproc.masking.spans import MaskEvent, Span
from extproc.masking.streaming import ByteStreamMasker, StreamingMasker

__all__ = [
    "BUILTIN_ENTITIES",
    "DENY_LIST_ENTITY",
    "HOLD_MARGIN",
    "LEFT_CONTEXT",
    "RIGHT_CONTEXT",
    "STYLES",
    "ByteStreamMasker",
    "MaskEvent",
    "MaskingProfile",
    "Span",
    "StreamingMasker",
    "default_profile",
]
