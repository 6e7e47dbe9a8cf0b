"""Inputs for the RUN stage: image files, folders, globs, path lists and video frames, decoded and prepared
exactly as the model was trained (size, channels, value range), with every bad input turned into a reason.

- ``alitool.io.sources``: expand command-line SOURCES into images, videos and skipped inputs;
- ``alitool.contract.preprocess``: decode image bytes and prepare them for a model (``Preprocess``), the one
  implementation shared with training and INT8 calibration (paper Appendix A: fixed-size images in [0, 1]);
- ``alitool.io.video``: read video frames (with a stride) and write side-by-side videos.
"""

from __future__ import annotations

from alitool.contract.preprocess import BadInput

__all__ = ["BadInput"]
