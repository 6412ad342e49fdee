"""Shared fixtures: small real recipes and a clean plugin manager per test."""

from __future__ import annotations

import copy
from contextlib import contextmanager
import math
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

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

#: Real Fashion-MNIST for the tests: Debian's dataset-fashion-mnist where it is installed
#: (``.ci/run`` installs it), else the subset shipped in ``tests/data/fashion-mnist`` (the
#: first 6,000 training and 1,000 test images, MIT licence), so that every test runs after
#: ``pip install -e ".[test]" && pytest``. ``LTH_TEST_FASHION=subset`` uses the subset even
#: where the package is installed. Tests that need all 70,000 images check ``FULL_FASHION``.
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
FASHION_SUBSET = Path(__file__).parent / "data" / "fashion-mnist"
FULL_FASHION = (DEBIAN_FASHION / "train-images-idx3-ubyte.gz").is_file() and os.environ.get("LTH_TEST_FASHION") != "subset"
needs_full_fashion = pytest.mark.skipif(not FULL_FASHION, reason="needs all of Fashion-MNIST: Debian's dataset-fashion-mnist (.ci/run installs it)")


def _fashion_data_root() -> Path:
    """A data root (``LTH_DATA``) for the whole session holding Fashion-MNIST's unpacked IDX
    files, read by the ``fashion_mnist`` data set (and by subprocesses, which inherit it)."""
    import atexit
    import shutil
    import tempfile

    from lth_datasets import prepare_debian_fashion_mnist

    root = Path(tempfile.mkdtemp(prefix="lth-test-data-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    assert prepare_debian_fashion_mnist(DEBIAN_FASHION if FULL_FASHION else FASHION_SUBSET, root)
    return root


os.environ["LTH_DATA"] = str(_fashion_data_root())

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


def pytest_collection_modifyitems(config, items) -> None:
    """``@pytest.mark.gpu`` tests need CUDA: without a device they are skipped, saying so."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (pytest -m gpu on a machine with one)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


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


#: What ``lth report`` on runs and merges must not import: torch, Lightning, and every
#: entry-point plugin (plugins import torch).
HEAVY_MODULES = ("torch", "pytorch_lightning", "lightning",
                 *sorted({ep.value.split(":")[0] for ep in importlib.metadata.entry_points(group="lth")}))


def lth_in_fresh_process(*argv: str) -> tuple[int, list[str]]:
    """Run ``lth ARGV`` (``lth_core.commands.cli.main``) in a new interpreter: its exit status
    and which of :data:`HEAVY_MODULES` it imported."""
    code = ("import json, sys\nfrom lth_core.commands.cli import main\nstatus = main(sys.argv[1:])\n"
            f"print(json.dumps(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules)))\nsys.exit(status)\n")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "WANDB_MODE": "offline"})
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])


def assert_same_data(got, want, where: str = "", **tolerance) -> None:
    """``got`` equals ``want`` (nested dicts and lists of JSON data): floats within
    ``tolerance`` (``math.isclose``'s ``rel_tol``/``abs_tol``), everything else exactly."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), where
        for k in want:
            assert_same_data(got[k], want[k], f"{where}.{k}", **tolerance)
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same_data(g, w, f"{where}[{i}]", **tolerance)
    elif isinstance(want, float):
        assert math.isclose(got, want, **tolerance), f"{where}: {got} != {want}"
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def with_changes(raw: dict, **changes) -> dict:
    """``raw`` with ``section__key=value`` (or ``section=value``) changes, as a new dict."""
    raw = copy.deepcopy(raw)
    for dotted, value in changes.items():
        section, _, key = dotted.partition("__")
        if key:
            raw[section][key] = value
        else:
            raw[section] = value
    return raw


@contextmanager
def registered(pm, plugin, name: str):
    """``plugin`` registered in ``pm`` as ``name`` for the block (a throwaway test plugin)."""
    pm.register(plugin, name=name)
    try:
        yield plugin
    finally:
        pm.unregister(plugin)
