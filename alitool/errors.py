"""User-facing errors: the CLI prints them as one line and exits non-zero, never with a traceback.

Supporting machinery for every stage of the paper's pipeline (Dumoulin et al. 2017, section 2); no model code.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix (a missing file, a bad option, a corrupt checkpoint)."""


class TrainingDiverged(UserError):
    """A loss or a parameter became NaN/inf; the last good checkpoint is kept."""


def first_line(err_or_text: BaseException | str, limit: int = 200, default: str | None = None) -> str:
    """The first line of an error's message (or of a text), at most ``limit`` characters: what fits in a one-line
    message when a library (torch, onnxruntime, tensorrt) raises pages of text. An empty message gives
    ``default``, or else the exception's type name (an empty string for an empty text)."""
    lines = str(err_or_text).strip().splitlines()
    if lines:
        return lines[0][:limit]
    if default is not None:
        return default
    return type(err_or_text).__name__ if isinstance(err_or_text, BaseException) else ""
