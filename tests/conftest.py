"""Shared fixtures: tiny real configs and models (nothing here stands in for torch or the file system). Helpers
that are not fixtures (TINY_DIGITS, running the CLI in a subprocess, ...) live in tests/helpers.py."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY_DIGITS

from alitool.config import load_config


@pytest.fixture(autouse=True, scope="session")
def _own_cache(tmp_path_factory):
    # The convolution paths a training run times are kept in the user's cache (alitool/conv_autotune.py): tests
    # keep theirs in a folder of their own, so that neither a developer's cache nor a test's choice leaks across.
    import os

    before = os.environ.get("ALITOOL_CACHE")
    os.environ["ALITOOL_CACHE"] = str(tmp_path_factory.mktemp("alitool-cache"))
    yield
    if before is None:
        os.environ.pop("ALITOOL_CACHE", None)
    else:
        os.environ["ALITOOL_CACHE"] = before


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
