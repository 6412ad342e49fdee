"""The plugin SDK is a promise: plugins use only what ``lth_core`` exports at its top level.

Every file under ``plugins/`` and the third-party example plugin is read as source: an
import of ``lth_core`` below its top level, a name ``lth_core`` does not export, or a
private torch or Lightning name (``torch._foreach_mul_``, ``nn.init._calculate_...``,
``module._parameters``) fails this test, naming the file and line. The SDK itself loads
lazily and every exported name resolves.
"""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

import lth_core

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_FILES = sorted((ROOT / "plugins").rglob("*.py")) + sorted((ROOT / "tests" / "third_party_plugin").rglob("*.py"))
#: Top-level packages whose private names a plugin may not touch.
GUARDED = ("torch", "pytorch_lightning", "lightning", "lightning_fabric", "torchmetrics", "torchvision")


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_members() -> set[str]:
    """Private attributes of the torch and Lightning objects a plugin handles (instances too:
    ``nn.Module._parameters`` is set in ``__init__``)."""
    from pytorch_lightning.core.optimizer import LightningOptimizer

    linear = nn.Linear(1, 1)
    objects = (linear, nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1), torch.zeros(1), nn.Parameter(torch.zeros(1)),
               torch.optim.SGD(linear.parameters(), lr=0.1), torch.Generator(), pl.LightningModule(), pl.Callback(),
               pl.Trainer, LightningOptimizer)
    return {name for obj in objects for name in dir(obj) if _private(name)}


PRIVATE_MEMBERS = _private_members()


def _guarded_aliases(tree: ast.AST) -> dict[str, str]:
    """Local names bound to torch or Lightning modules and objects by this file's imports."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in GUARDED:
                    aliases[a.asname or a.name.split(".")[0]] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in GUARDED:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    return aliases


def _chain(node: ast.Attribute) -> list[str]:
    """``a.b.c`` as ["a", "b", "c"] (["?", ...] when the root is not a plain name)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    parts.append(node.id if isinstance(node, ast.Name) else "?")
    return parts[::-1]


def violations(path: Path) -> list[str]:
    """Every use in ``path`` of something outside the SDK or private to torch/Lightning."""
    tree = ast.parse(path.read_text(), str(path))
    aliases, found = _guarded_aliases(tree), []
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    where = lambda node: f"{shown}:{node.lineno}"  # noqa: E731
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            top = node.module.split(".")[0]
            if node.module.startswith("lth_core."):
                found.append(f"{where(node)} imports {node.module} (only `from lth_core import ...` is the SDK)")
            elif node.module == "lth_core":
                found += [f"{where(node)} imports lth_core.{a.name}, which the SDK does not export"
                          for a in node.names if a.name not in lth_core.__all__]
            elif top in GUARDED and (any(_private(p) for p in node.module.split(".")) or any(_private(a.name) for a in node.names)):
                found.append(f"{where(node)} imports a private name from {node.module}")
        elif isinstance(node, ast.Import):
            found += [f"{where(node)} imports {a.name} (only `from lth_core import ...` is the SDK)"
                      for a in node.names if a.name.startswith("lth_core.")]
            found += [f"{where(node)} imports private module {a.name}" for a in node.names
                      if a.name.split(".")[0] in GUARDED and any(_private(p) for p in a.name.split("."))]
        elif isinstance(node, ast.Attribute):
            chain = _chain(node)
            if chain[0] in aliases and any(_private(p) for p in chain[1:]):
                found.append(f"{where(node)} uses the private {'.'.join(chain)}")
            elif chain[0] == "lth_core" and chain[1] not in lth_core.__all__:
                found.append(f"{where(node)} uses lth_core.{chain[1]}, which the SDK does not export")
            elif node.attr in PRIVATE_MEMBERS:
                found.append(f"{where(node)} uses {node.attr}, a private attribute of torch or Lightning objects")
    return found


@pytest.mark.parametrize("path", PLUGIN_FILES, ids=[str(p.relative_to(ROOT)) for p in PLUGIN_FILES])
def test_plugins_use_only_the_sdk_and_public_torch(path: Path):
    assert violations(path) == []


def test_the_rule_catches_what_it_forbids(tmp_path: Path):
    """Each kind of reach past the SDK is found (the test above cannot pass by seeing nothing)."""
    bad = tmp_path / "plugin.py"
    bad.write_text(
        "import torch\nfrom torch import nn\nimport lth_core.tickets.mask\n"
        "from lth_core.lottery.train import train\nfrom lth_core import Mask, engines\n"
        "from torch.nn.modules.batchnorm import _NormBase\n"
        "a = torch._foreach_mul_\nb = nn.init._calculate_fan_in_and_fan_out\nc = lth_core.tickets\n"
        "def f(module):\n    return module._parameters, module._conv_forward\n"
    )
    text = "\n".join(violations(bad))
    for expected in ("imports lth_core.tickets.mask", "imports lth_core.lottery.train", "lth_core.engines, which the SDK",
                     "private name from torch.nn.modules.batchnorm", "torch._foreach_mul_", "nn.init._calculate_fan_in_and_fan_out",
                     "lth_core.tickets, which the SDK", "_parameters, a private attribute", "_conv_forward, a private attribute"):
        assert expected in text, expected
    assert "Mask" not in text


def test_every_sdk_name_resolves_and_is_documented():
    """``lth_core.<name>`` works for every name in ``__all__``, each has a docstring, and
    docs/sdk.md (made by ``python -m lth_core.commands.sdk_docs``) is up to date."""
    from lth_core.commands.sdk_docs import sdk_reference

    for name in lth_core.__all__:
        value = getattr(lth_core, name)
        if name != "__version__":
            assert inspect.getdoc(value), f"lth_core.{name} has no docstring"
    assert (ROOT / "docs" / "sdk.md").read_text() == sdk_reference(), "docs/sdk.md is stale: run python -m lth_core.commands.sdk_docs"


def test_importing_the_sdk_loads_neither_torch_nor_lightning():
    """``import lth_core`` is cheap: names load on first use."""
    code = "import sys, lth_core; print(sorted(m for m in ('torch', 'pytorch_lightning') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_sdk_helper_shows_its_whole_signature():
    """docs/sdk.md shows each helper's signature: every parameter annotated and a return
    type (exceptions excepted: their signature is Exception's), a type alias as written."""
    from lth_core.commands.sdk_docs import _signature

    for name in lth_core.SDK:
        value = getattr(lth_core, name)
        if inspect.isclass(value) and issubclass(value, Exception):
            continue
        if getattr(value, "__metadata__", None) is not None:  # Number: an Annotated type, not a callable
            assert _signature(name, value).startswith(f"{name} = Annotated["), name
            continue
        signature = inspect.signature(value)
        bare = [p for p, v in signature.parameters.items() if v.annotation is inspect.Parameter.empty]
        assert not bare, f"lth_core.{name}: parameters {bare} have no type"
        assert inspect.isclass(value) or signature.return_annotation is not inspect.Signature.empty, f"lth_core.{name} has no return type"


@pytest.mark.parametrize("name", ["PruneContext", "RewindContext", "RoundContext", "MergeContext", "MergeResult"])
def test_every_context_field_is_documented(name):
    """Each field a plugin reads from (or sets on) a context is explained in its docstring,
    which docs/sdk.md shows."""
    import dataclasses

    cls = getattr(lth_core, name)
    undocumented = [f.name for f in dataclasses.fields(cls) if f"``{f.name}``" not in inspect.getdoc(cls)
                    and f"``{f.name}(" not in inspect.getdoc(cls)]
    assert not undocumented, f"{name}'s docstring does not explain {undocumented}"
