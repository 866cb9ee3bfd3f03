"""Reading a configuration file: the one place the configuration touches the file system and the
process environment. Everything it returns is plain, immutable data from ``model``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from extproc.config.model import Config, _load_with_lines, parse_config
from extproc.errors import ConfigError

__all__ = ["load_config"]


def load_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> Config:
    file = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=file) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not valid UTF-8 (byte {exc.start})", file=file) from None
    data, lines = _load_with_lines(text, file)
    return parse_config(data, file=file, lines=lines, env=os.environ if env is None else env, text=text)
