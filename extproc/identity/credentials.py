"""Provider credentials: read from the environment or a file, never from the caller.

File sources are re-read when the file changes (a rotated Kubernetes Secret is an atomic
symlink swap), checked at most once a second so the hot path stays a dictionary look-up.
A credential that cannot be read is ``None``: the request then fails closed with 503.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from extproc.config.model import CredentialConfig, ProviderConfig

__all__ = ["CredentialStore"]

log = logging.getLogger("extproc.credentials")

RECHECK_SECONDS = 1.0


@dataclass(slots=True)
class _FileState:
    path: str
    value: str | None = None
    stamp: tuple[int, int, int] | None = None
    checked_at: float = -1e18


class CredentialStore:
    def __init__(
        self,
        providers: Sequence[ProviderConfig],
        *,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sources: dict[str, CredentialConfig] = {
            p.name: p.credential for p in providers if p.credential is not None
        }
        self._environ = os.environ if environ is None else environ
        self._clock = clock
        self._files: dict[str, _FileState] = {
            name: _FileState(src.file) for name, src in self._sources.items() if src.file
        }

    def get(self, provider: str) -> str | None:
        src = self._sources.get(provider)
        if src is None:
            return None
        if src.env:
            value = self._environ.get(src.env, "").strip()
            return value or None
        return self._read_file(self._files[provider])

    def file_problems(self) -> dict[str, str]:
        """Provider -> ``missing`` or ``unreadable (...)`` for file credentials that cannot be
        used right now. ``unreadable`` (the file is there, this uid may not read it) is a
        deployment error: ``serve`` refuses to start and ``/readyz`` fails on it. ``missing``
        is not: a namespace may hold keys for some providers only."""
        out: dict[str, str] = {}
        for name, st in self._files.items():
            try:
                with open(st.path, "rb") as fh:
                    fh.read(1)
            except FileNotFoundError:
                out[name] = "missing"
            except OSError as exc:
                out[name] = f"unreadable ({exc.strerror or type(exc).__name__}, uid {os.getuid()})"
        return out

    def all_values(self) -> list[str]:
        """Every credential currently known: what responses are scrubbed of."""
        return [v for v in (self.get(n) for n in self._sources) if v]

    def _read_file(self, st: _FileState) -> str | None:
        now = self._clock()
        if now - st.checked_at < RECHECK_SECONDS:
            return st.value
        st.checked_at = now
        try:
            s = os.stat(st.path)
        except OSError:
            if st.value is not None:
                log.warning("credential file %s disappeared", st.path)
            st.value, st.stamp = None, None
            return None
        stamp = (s.st_mtime_ns, s.st_size, s.st_ino)
        if stamp != st.stamp:
            try:
                with open(st.path, encoding="utf-8") as fh:
                    st.value = fh.read().strip() or None
                st.stamp = stamp
                log.info("loaded credential from %s", st.path)
            except (OSError, UnicodeDecodeError):
                log.warning("credential file %s cannot be read", st.path)
                st.value = None
        return st.value
