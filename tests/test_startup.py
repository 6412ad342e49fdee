"""Commands that do not train start without torch or Lightning (issue 22, item 1).

Importing Lightning costs about 5 s of CPU and 0.8 GB here; ``lth --help``, ``lth
recipes``, ``lth plugins``, ``lth report``, a ``--resume`` mistake and every recipe
mistake (plugin names and options included: the bundled plugins load without torch) must
not pay it. Each command runs in a fresh interpreter and the test reads ``sys.modules``
afterwards: which modules were imported, not how long it took. The Trainer's signature,
read from Lightning's source instead of imported, is compared with the real one.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lth_core.config import lightning_source
from lth_core.config.trainer import _annotation_types, _literals

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "finished"
#: What a command that does not train must leave out of ``sys.modules``.
HEAVY = ("torch", "pytorch_lightning", "lightning", "lightning_fabric", "torchmetrics", "torchvision")


def fresh(*argv: str) -> tuple[int, list[str], str]:
    """``lth ARGV`` in a new interpreter (bundled plugins only): exit status, the heavy
    modules it imported, and its standard error."""
    code = ("import json, sys\nfrom lth_core.commands.cli import main\n"
            "try:\n    status = main(sys.argv[1:])\nexcept SystemExit as exc:\n    status = exc.code\n"
            f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\nsys.exit(status)\n")
    env = {**os.environ, "WANDB_MODE": "offline", "LTH_DISABLE_PLUGIN_AUTOLOAD": "1"}
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["recipes"], ["recipes", "--paths"], ["plugins"],
                                  ["plugins", "--json"], ["run", "--help"], ["extend", "--help"]],
                         ids=lambda a: " ".join(a))
def test_commands_that_only_list_import_no_torch(argv) -> None:
    status, heavy, err = fresh(*argv)
    assert (status, heavy) == (0, []), err[-2000:]


def test_report_imports_no_torch(tmp_path) -> None:
    status, heavy, err = fresh("report", str(GOLDEN), "--out", str(tmp_path / "rep"))
    assert (status, heavy) == (0, []), err[-2000:]
    assert (tmp_path / "rep" / "report.md").is_file()


RESUME_MISTAKES = {
    "no_folder": ["run", "--resume", "nowhere"],
    "a_file": ["run", "--resume", "README.md"],
    "a_ticket_folder": ["run", "--resume", str(GOLDEN / "round_1")],
    "not_a_run_folder": ["run", "--resume", "recipes"],
    "with_set": ["run", "--resume", str(GOLDEN), "--set", "lottery.rate=0.3"],
    "with_recipe": ["run", "quickstart", "--resume", str(GOLDEN)],
    "no_recipe": ["run"],
}
#: ``--set`` mistakes in the quickstart recipe; the last ones need the (torch-free) plugins.
RECIPE_MISTAKES = {
    "missing_file": ["run", "no-such-recipe.yaml"],
    "rate": ["--set", "lottery.rate=2"],
    "scope": ["--set", "lottery.scope=everywhere"],
    "batch_size": ["--set", "data.batch_size=0"],
    "optimizer": ["--set", "optimizer.name=rmsprop"],
    "max_steps": ["--set", "trainer.max_steps=0"],
    "trainer_key": ["--set", "trainer.max_stepz=10"],
    "trainer_type": ["--set", "trainer.gradient_clip_val=x"],
    "accelerator": ["--set", "trainer.accelerator=quantum"],
    "precision": ["--set", "trainer.precision=17"],
    "strategy": ["--set", "trainer.strategy=ddp_spawn"],
    "sweep": ["--set", "sweep.lottery.rate=[]"],
    "control_twice": ["--set", "controls=[random_reinit, random_reinit]"],
    "typo_section": ["--set", "modle.name=mlp"],
    "model_name": ["--set", "model.name=lenet5"],
    "model_option": ["--set", "model.hidden=wide"],
    "criterion": ["--set", "lottery.criterion=largest"],
    "data_option": ["--set", "data.colour=true"],
    "extend_section": ["--set", "extend.classes=[1]"],
}


@pytest.mark.parametrize("argv", list(RESUME_MISTAKES.values()), ids=list(RESUME_MISTAKES))
def test_resume_mistakes_import_no_torch(argv) -> None:
    status, heavy, err = fresh(*argv)
    assert (status, heavy) == (2, []), err[-2000:]
    assert err.strip().splitlines()[-1].startswith("lth: error: ")


@pytest.mark.parametrize("argv", list(RECIPE_MISTAKES.values()), ids=list(RECIPE_MISTAKES))
def test_recipe_mistakes_import_no_torch(argv, tmp_path) -> None:
    if argv[0] != "run":
        argv = ["run", "quickstart", "--out", str(tmp_path / "run"), *argv]
    status, heavy, err = fresh(*argv)
    assert (status, heavy) == (2, []), err[-2000:]
    assert err.strip().splitlines()[-1].startswith("lth: error: ") and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_the_trainer_signature_read_from_source_is_lightning_s() -> None:
    """Names, order, the YAML types each annotation admits, precision's values and the
    accelerator names: as the imported Trainer of the installed Lightning has them."""
    import pytorch_lightning as pl
    from pytorch_lightning.accelerators import AcceleratorRegistry

    real = {n: p for n, p in inspect.signature(pl.Trainer.__init__).parameters.items() if n != "self"}
    read = lightning_source.trainer_parameters()
    assert list(read) == list(real)
    assert {n: _annotation_types(p.annotation) for n, p in read.items()} == {n: _annotation_types(p.annotation) for n, p in real.items()}
    assert _literals(read["precision"].annotation) == _literals(real["precision"].annotation)
    assert lightning_source.accelerator_names() == frozenset(AcceleratorRegistry.available_accelerators())


def test_an_unreadable_source_is_said_so() -> None:
    """What the reader does not know raises Unreadable (the check then imports Lightning)."""
    with pytest.raises(lightning_source.Unreadable):
        lightning_source.module_file("torch.nn")
    with pytest.raises(lightning_source.Unreadable):
        lightning_source.resolve("pytorch_lightning.trainer.trainer", "NoSuchName")
