"""``extproc mask``: mask a text offline the way the gateway would, and say why.

``--explain`` lists every span a detector masked, every span a detector claimed and kept
whole (a bad-checksum IBAN, a version number after "Version"), and every candidate a
validator turned down, each with the detector, its rule and the reason.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from extproc.config.load import load_config
from extproc.errors import ConfigError
from extproc.masking.profile import MaskingProfile, default_profile

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("mask", help="mask a text (file or stdin) offline; --explain says why per span")
    p.add_argument("file", nargs="?", default="-", help="text to mask (default: stdin)")
    p.add_argument("--config", "-c", help="take detectors, lists and styles from this configuration's masking section")
    p.add_argument("--explain", action="store_true",
                   help="list every masked, kept and rejected span with detector, rule and reason")
    p.add_argument("--json", action="store_true", help="with --explain: one JSON object per span")
    p.set_defaults(func=cmd_mask)


def run(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point (``python -m extproc.masking.cli``), also used by the tests."""
    parser = argparse.ArgumentParser(prog="extproc")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    rc: int = args.func(args)
    return rc


def _profile(config: str | None) -> MaskingProfile:
    if config is None:
        return default_profile()
    return MaskingProfile.from_spec(load_config(config).file.masking)


def cmd_mask(args: argparse.Namespace) -> int:
    try:
        profile = _profile(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.file == "-":
            text = sys.stdin.read()
        else:
            with open(args.file, encoding="utf-8", errors="replace") as fh:
                text = fh.read()
    except OSError as exc:
        print(f"error: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 1
    if not args.explain:
        masked, _ = profile.mask(text)
        sys.stdout.write(masked)
        return 0
    for d in profile.explain(text):
        value = text[d.start : d.end]
        if args.json:
            print(json.dumps({"start": d.start, "end": d.end, "text": value, "outcome": d.outcome,
                              "detector": d.entity, "rule": d.rule, "reason": d.reason}, ensure_ascii=False))
        else:
            print(f"{d.start}-{d.end}\t{d.outcome}\t{d.entity}\t{d.rule}\t{value!r}\t{d.reason}")
    return 0


if __name__ == "__main__":
    sys.exit(run())
