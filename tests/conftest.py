"""Shared fixtures: tiny real configs and models (nothing here stands in for torch or the file system). Helpers
that are not fixtures (TINY_DIGITS, running the CLI in a subprocess, ...) live in tests/helpers.py."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY_DIGITS

from alitool.config import load_config


@pytest.fixture
def tiny_cfg():
    return load_config("digits", TINY_DIGITS)


@pytest.fixture(autouse=True)
def _few_threads():
    # Two cores in CI: tests are faster with one intra-op thread and less noisy with a fixed seed.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(before)
