"""Inputs for the RUN stage: image files, folders, globs, path lists and video frames, decoded and prepared
exactly as the model was trained (size, channels, value range), with every bad input turned into a reason.

- ``alitool.io.sources``: expand command-line SOURCES into images, videos and skipped inputs;
- ``alitool.io.images``: decode image bytes and prepare them for a model (``Preprocess``);
- ``alitool.io.video``: read video frames (with a stride) and write side-by-side videos.
"""

from __future__ import annotations


class BadInput(Exception):
    """One input cannot be used; ``str(err)`` says why in a few words. It is skipped, never fatal."""
