"""Text as a model reads it: pure functions, no I/O (see :mod:`extproc.text.normalise`)."""

from extproc.text.normalise import View, normalise, normalise_char, view

__all__ = ["View", "normalise", "normalise_char", "view"]
