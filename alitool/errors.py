"""User-facing errors: the CLI prints them as one line and exits non-zero, never with a traceback.

Supporting machinery for every stage of the paper's pipeline (Dumoulin et al. 2017, section 2); no model code.
"""

from __future__ import annotations

import re


class UserError(Exception):
    """Something the user can fix (a missing file, a bad option, a corrupt checkpoint)."""


class TrainingDiverged(UserError):
    """A loss or a parameter became NaN/inf; the last good checkpoint is kept."""


# ONNX Runtime starts every message with "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : ": a status code, not news.
_ONNXRUNTIME_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")


def one_line(err_or_text: BaseException | str, limit: int = 200, default: str | None = None) -> str:
    """An error's message (or a text) folded onto one line of at most ``limit`` characters, for a one-line error
    when a library (torch, onnxruntime, tensorrt) raises pages of text. Lines are joined, not dropped, since
    libraries often put the detail on the second line (ONNX Runtime's "index: 1 Got: 5 Expected: 4"); a message
    that is too long is cut at a word and ends in "...". An empty message gives ``default``, or else the
    exception's type name (an empty string for an empty text)."""
    text = " ".join(_ONNXRUNTIME_PREFIX.sub("", str(err_or_text).strip()).split())
    if not text:
        if default is not None:
            return default
        return type(err_or_text).__name__ if isinstance(err_or_text, BaseException) else ""
    if len(text) <= limit:
        return text
    cut = text[: max(limit - 4, 1)]
    if " " in cut[limit // 2:]:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,;:") + " ..."

