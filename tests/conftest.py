"""Shared fixtures: tiny real configs and models (nothing here stands in for torch or the file system)."""

from __future__ import annotations

import pytest
import torch

from alitool.config import load_config

# A digits-shaped model small enough that a training step takes milliseconds.
TINY_DIGITS = [
    "model.latent_dim=4",
    "model.encoder=[[conv,3,1,8,true,0.0,lrelu],[conv,3,1,8,true,0.0,lrelu],[conv,4,1,16,true,0.0,lrelu],"
    "[conv,1,1,8,false,0.0,linear]]",
    "model.decoder=[[deconv,4,1,16,true,0.0,lrelu],[deconv,3,1,8,true,0.0,lrelu],[deconv,3,1,8,true,0.0,lrelu],"
    "[conv,1,1,1,false,0.0,sigmoid]]",
    "model.disc_x=[[conv,3,1,8,false,0.2,lrelu],[conv,3,1,8,true,0.2,lrelu],[conv,4,1,16,true,0.2,lrelu]]",
    "model.disc_z=[[conv,1,1,16,false,0.2,lrelu]]",
    "model.disc_xz=[[conv,1,1,16,false,0.2,lrelu],[conv,1,1,1,false,0.2,linear]]",
    "train.batch_size=32",
    "train.sample_grid=16",
    "train.alice=0",  # the plain ALI game (digits.yaml turns ALICE on); the switch tests turn it on themselves
]


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
