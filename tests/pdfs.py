"""Tiny PDFs made on the spot for attachment tests (no fixtures checked in)."""

from __future__ import annotations

import zlib


def pdf(text: str, *, bomb: bool = False) -> bytes:
    """A one-page PDF showing ``text`` (ASCII), or with ``bomb`` a content stream that
    inflates to 64 MiB from a few dozen KiB."""
    if bomb:
        raw = zlib.compress(b"0" * (64 << 20), 9)
        stream = b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(raw) + raw + b"\nendstream"
    else:
        content = f"BT /F1 12 Tf 72 712 Td ({text}) Tj ET".encode("latin-1")
        stream = b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        stream,
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)
