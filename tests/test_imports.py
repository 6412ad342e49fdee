"""lth's own modules and the bundled plugins import nothing heavy before it is needed (issue 22, item 2).

Two fresh interpreters, reading ``sys.modules``: what a command that does not train loads
(the SDK facade, recipes, the plugin API, the report, every bundled plugin package) brings
in neither torch nor Lightning nor matplotlib, scipy, scikit-learn, torchvision or W&B; and
once torch and Lightning are loaded (a training process), importing every module of
lth_core and of the bundled plugins adds neither scikit-learn nor W&B (the data set that
needs scikit-learn and the tracking that needs W&B import them when they run).
"""

from __future__ import annotations

import importlib.metadata
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import lth_core

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = sorted({ep.value.split(":")[0] for ep in importlib.metadata.entry_points(group="lth") if ep.dist and ep.dist.metadata["Name"] == "lth"})
LIGHT = ["lth_core", "lth_core.config", "lth_core.commands.cli", "lth_core.plugin_api.options", "lth_core.plugin_api.datasets",
         "lth_core.reporting.report", "lth_core.reporting.merge_report", "lth_core.lottery.api", "lth_frankenmodel.report",
         "lth_frankenmodel.settings", "lth_models.convnets", *PLUGINS]
HEAVY = ["torch", "pytorch_lightning", "lightning_fabric", "torchmetrics", "torchvision", "matplotlib", "scipy", "sklearn", "wandb"]


def imported(first: list[str], then: list[str], watch: list[str]) -> list[str]:
    """In a fresh interpreter: import ``first``, then ``then``; which of ``watch`` ``then`` added."""
    code = ("import importlib, json, sys\n"
            f"for m in {first!r}: importlib.import_module(m)\n"
            f"before = {{w for w in {watch!r} if w in sys.modules}}\n"
            f"for m in {then!r}: importlib.import_module(m)\n"
            f"print(json.dumps(sorted(w for w in {watch!r} if w in sys.modules and w not in before)))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def all_modules() -> list[str]:
    """Every module of lth_core and of the bundled plugins (submodules included)."""
    names = [m.name for m in pkgutil.walk_packages(lth_core.__path__, "lth_core.") if not m.name.endswith("__main__")]
    for plugin in PLUGINS:
        package = importlib.import_module(plugin)
        names += [plugin, *(m.name for m in pkgutil.walk_packages(package.__path__, f"{plugin}."))]
    return names


def test_the_bundled_plugins_are_all_checked() -> None:
    assert len(PLUGINS) >= 14 and "lth_datasets" in PLUGINS and "lth_models" in PLUGINS


def test_what_commands_load_imports_nothing_heavy() -> None:
    assert imported([], LIGHT, HEAVY) == []


def test_a_training_process_gains_neither_scikit_learn_nor_wandb_from_lth_s_imports() -> None:
    assert imported(["torch", "pytorch_lightning"], all_modules(), ["sklearn", "wandb", "scipy", "matplotlib"]) == []


def test_nothing_requires_torch_s_cuda_build() -> None:
    """The README's CPU-only install (torch and torchvision from PyTorch's CPU index, versions
    ``X+cpu``) satisfies lth's requirements, and lth requires no CUDA package."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.version import Version

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = {r.name: r for r in map(Requirement, project["dependencies"])}
    assert not [n for n in requirements if n.startswith(("nvidia", "cuda"))]
    for name in ("torch", "torchvision"):
        public = Version(importlib.metadata.version(name)).public  # this environment's version, as the CPU index has it
        assert requirements[name].specifier.contains(f"{public}+cpu"), (name, str(requirements[name].specifier))
