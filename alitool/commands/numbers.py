"""Click types for numeric options: bounds checked when the command line is parsed, so that a bad number ends
with click's usage error (exit status 2), never with a traceback, a MemoryError or silent nonsense."""

from __future__ import annotations

import math

import click

from alitool.config import SEED_MAX, check_memory
from alitool.contract.preprocess import MAX_PIXELS_CEILING
from alitool.errors import UserError

# What one more image row of a picture or batch costs at least: a 64x64 RGB image as float32 (the paper's largest
# models), held about four times (model input, output, picture, encoding).
ROW_BYTES = 3 * 64 * 64 * 4 * 4

SEED = click.IntRange(0, SEED_MAX)
# --max-megapixels: up to the decoders' own guard.
MAX_MEGAPIXELS = MAX_PIXELS_CEILING / 1e6


class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that also refuses nan (which compares false with every bound)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{value!r} is not a number", param, ctx)
        return number


class MemoryCount(click.IntRange):
    """A count of images held in memory at once (--n, --steps, --batch-size, --rows): at least ``min`` and
    within the memory available, at ``ROW_BYTES`` per image."""

    def __init__(self, min: int = 1, row_bytes: int = ROW_BYTES):
        super().__init__(min=min)
        self.row_bytes = row_bytes

    def convert(self, value, param, ctx):
        count = super().convert(value, param, ctx)
        try:
            check_memory(f"--{param.name.replace('_', '-')}" if param is not None else "count", count,
                         self.row_bytes)
        except UserError as err:
            self.fail(str(err), param, ctx)
        return count
