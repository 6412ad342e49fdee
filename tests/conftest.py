"""Shared fixtures: small real recipes and a clean plugin manager per test."""

from __future__ import annotations

import copy
import os

import pytest

# Tiny models gain nothing from a second thread, and two spinning OpenMP threads slow to a
# crawl when another process holds a core (20x measured here): one thread per test process.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import torch  # noqa: E402

from lth_core import quiet_lightning  # noqa: E402

torch.set_num_threads(1)

quiet_lightning()

#: A real but tiny lottery on scikit-learn's digits: seconds per round on a CPU.
TINY = {
    "name": "tiny",
    "seed": 0,
    "model": {"name": "mlp", "hidden": [64, 32]},
    "data": {"name": "digits", "batch_size": 32, "val_size": 0.1},
    "optimizer": {"name": "adam", "lr": 3e-3},
    "trainer": {"max_steps": 60, "val_check_interval": 20, "enable_progress_bar": False},
    "lottery": {"criterion": "magnitude", "rewind": "init", "rounds": 2, "rate": 0.5},
    "controls": [],
    "tracking": "none",
}


@pytest.fixture
def tiny_raw() -> dict:
    """A fresh copy of the tiny recipe as a plain dict (mutate freely)."""
    return copy.deepcopy(TINY)


@pytest.fixture(scope="session")
def make_tiny():
    """For module-scoped fixtures: a function returning fresh copies of the tiny recipe."""
    return lambda: copy.deepcopy(TINY)


@pytest.fixture
def pm():
    """A freshly loaded plugin manager, installed as the process-wide one for the test."""
    from lth_core.plugin_api import registry as plugins

    saved = plugins._PM
    plugins._PM = plugins.make_plugin_manager()
    yield plugins._PM
    plugins._PM = saved
