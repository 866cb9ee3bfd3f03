"""Which request paths the gateway routes, and which it refuses as ambiguous. Pure.

Envoy normalises the path before routing (``normalize_path``: dot segments and percent-encoded
unreserved characters; ``merge_slashes``; ``path_with_escaped_slashes_action: REJECT_REQUEST``
for ``%2F`` and ``%5C``). This is the second line: any path that an upstream could still read
differently from the gateway is refused here, before routing and before policy, because the
operation (and so which content rules apply) is derived from the path:

* path parameters (``/chat/completions;x=y``): Envoy keeps them, many servers strip them;
* percent-encoded ``/ \\ . % ;`` or NUL that survived Envoy (``%252F`` decodes to ``%2F`` at an
  upstream that decodes twice);
* backslashes, control characters, dot segments and empty segments.

No API this gateway fronts uses any of these in a path.
"""

from __future__ import annotations

import re

__all__ = ["path_problem"]

_ENCODED = re.compile(r"%(2f|5c|2e|25|3b|00)", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def path_problem(target: str) -> str | None:
    """Why ``target`` (``:path``, query included) is refused, or None when it is unambiguous."""
    path = target.split("?", 1)[0]
    if not path.startswith("/"):
        return "the path must start with '/'"
    if _CONTROL.search(target):
        return "the path contains a control character"
    if "\\" in path:
        return "the path contains a backslash"
    if ";" in path:
        return "the path contains a path parameter (';')"
    if "#" in path:
        return "the path contains a fragment ('#')"
    m = _ENCODED.search(path)
    if m is not None:
        return f"the path contains an encoded {m.group(0).upper()}"
    segments = path.split("/")[1:]
    for i, seg in enumerate(segments):
        if seg in (".", ".."):
            return "the path contains a dot segment"
        if seg == "" and i != len(segments) - 1:
            return "the path contains an empty segment ('//')"
    return None
