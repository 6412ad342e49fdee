"""The documentation is real: the examples in README.md, docs/ and CONTRIBUTING.md run, the
site builds with ``mkdocs build --strict`` (a broken link or reference fails), its hook
reference is generated from the hookspecs, and user docs speak to users."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import torch

from lth_core.lottery.rounds import run_lottery
from lth_core.plugin_api.registry import get_registry
from lth_core.config import validate
from lth_core.plugin_api.options import check_against_plugins
from lth_core.tickets.ticket import load_ticket

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def as_module(name: str, code: str) -> types.ModuleType:
    module = types.ModuleType(name)
    sys.modules[name] = module  # as an imported plugin is: pydantic resolves a model's annotations through it
    exec(compile(code, name, "exec"), module.__dict__)  # noqa: S102 - our own documentation
    return module


def test_readme_plugin_runs_in_a_lottery(pm, tiny_raw, tmp_path):
    """The ten-line plugin in the README registers a criterion that a recipe can use."""
    block = next(b for b in python_blocks(ROOT / "README.md") if "noisy_magnitude" in b)
    plugin = as_module("readme_plugin", block)
    pm.register(plugin, name="readme_plugin")
    try:
        assert get_registry(pm).get("criteria", "noisy_magnitude").plugin == "readme_plugin"
        tiny_raw["lottery"].update(criterion="noisy_magnitude", rounds=1)
        summary = run_lottery(validate(tiny_raw), tmp_path, say=lambda s: None, pm=pm)
    finally:
        pm.unregister(name="readme_plugin")
    assert summary["rounds"][1]["weights_remaining"] < 0.51
    ticket = load_ticket(tmp_path / "round_1")
    assert ticket.meta["recipe_hash"] == summary["recipe_hash"]


def test_contributing_examples_register_and_run(pm, tiny_raw, tmp_path):
    """Every CONTRIBUTING example hook loads together as one plugin and a run uses them."""
    code = "\n\n".join(python_blocks(ROOT / "CONTRIBUTING.md"))
    plugin = as_module("contributing_examples", code)
    pm.register(plugin, name="contributing_examples")
    try:
        registry = get_registry(pm)
        assert registry.get("criteria", "relative_growth")
        assert registry.get("rewind_policies", "keep")
        assert registry.get("controls", "keep_control").extra["rewind"] == "keep"
        assert registry.get("models", "tiny_cnn")
        assert registry.get("datasets", "xor_blobs")
        assert registry.get("callbacks", "prune_once")
        assert registry.get("initializers", "uniform_pm")
        assert registry.get("commands", "hello").extra["help"] == "say hello"
        assert registry.get("merge_strategies", "lerp")
        assert registry.get("report_sections", "notes").args[0].__name__ == "notes_section"
        assert registry.get("recipe_sections", "sparsity_report").plugin == "contributing_examples"
        with_section = validate({**tiny_raw, "sparsity_report": {"every": 2}})
        check_against_plugins(with_section, registry)
        assert plugin.sparsity_report(with_section) == plugin.SparsityReport(every=2, unit="percent")
        assert plugin.sparsity_report(validate(tiny_raw)) is None
        tiny_raw["init"] = {"name": "uniform_pm", "scale": 0.1}
        tiny_raw["lottery"].update(criterion="relative_growth", rounds=1)
        tiny_raw["controls"] = ["keep_control"]
        tiny_raw["callbacks"] = [{"name": "prune_once", "at": 30}]
        summary = run_lottery(validate(tiny_raw), tmp_path, say=lambda s: None, pm=pm)
    finally:
        pm.unregister(name="contributing_examples")
    assert set(summary["controls"]) == {"keep_control"}
    # prune_once halved every layer during each ticket run: round 0 ends at 50%, round 1
    # starts at 25% (rate 0.5 of round 0's ticket) and ends at 12.5%.
    densities = [r["weights_remaining"] for r in summary["rounds"]]
    assert densities == pytest.approx([0.5, 0.125], abs=0.01)
    # keep_control starts from the weights round 1 was pruned from (round 0's trained
    # weights, masked), not from θ0 as the ticket does.
    ticket = load_ticket(tmp_path / "round_1")
    control = load_ticket(tmp_path / "round_1" / "control_keep_control")
    round0 = load_ticket(tmp_path / "round_0")
    for name in ticket.mask:  # θ0 came from the documented initialisation
        assert round0.init[name].abs().max() <= 0.1 and round0.init[name].std() > 0.04
    assert control.mask == ticket.mask
    for name, kept in ticket.mask.items():
        assert torch.equal(control.init[name], round0.final[name])
        assert torch.equal(ticket.init[name], round0.init[name])
        assert not torch.equal(control.init[name], ticket.init[name])


def test_readme_python_api_example_runs_as_written(tmp_path, monkeypatch, capsys):
    """The "From Python" page's first block, run as written (in a scratch folder): a criterion
    defined in the block prunes two rounds of the quickstart through ``plugins=``."""
    block = next(b for b in python_blocks(ROOT / "docs" / "python.md") if "lth_core.run(" in b)
    monkeypatch.chdir(tmp_path)
    module = as_module("readme_python_api", block)
    summary = module.summary
    assert summary.out_dir.resolve() == (tmp_path / "runs" / "quick").resolve() and (summary.out_dir / "summary.json").is_file()
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
    assert summary["recipe"]["lottery"]["criterion"] == "far_from_init"
    assert module.ticket.mask.density() == summary["rounds"][2]["weights_remaining"]
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and printed[1].startswith(f"{module.ticket.mask.density()}")


def test_readme_own_lightning_module_example_runs_as_written(tmp_path, monkeypatch, capsys):
    """The "From Python" page's complete example (a datamodule, a module, one call) runs as written:
    three rounds of the user's own classifier with the random-reinit control."""
    block = next(b for b in python_blocks(ROOT / "docs" / "python.md") if "module=Classifier" in b)
    monkeypatch.chdir(tmp_path)
    module = as_module("readme_own_module", block)
    summary = module.summary
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2, 3]
    assert [r["weights_remaining"] for r in summary["rounds"]] == pytest.approx([1.0, 0.5, 0.25, 0.125], abs=0.01)
    assert summary["rounds"][1]["test_acc"] > 0.8
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 3 and printed[0].startswith("50.0% remaining: ticket 0.")


#: Python blocks of the user docs the tests above run, by a line each holds.
RUN_BY_TESTS = ("noisy_magnitude", "lth_core.run(", "module=Classifier")
#: Blocks that are parts of a session, not programs: what each needs that a page cannot give.
FRAGMENTS = {"load_ticket(\"runs/quickstart-...": "a finished run's folder and its model"}
USER_DOCS = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "sdk.md")]


def test_every_python_block_of_the_user_docs_is_run_or_a_named_fragment() -> None:
    """A block meant to run is run by a test above; the others are named here, and compile."""
    for page in USER_DOCS:
        for block in python_blocks(page):
            compile(block, str(page), "exec")
            known = [m for m in (*RUN_BY_TESTS, *FRAGMENTS) if m in block]
            assert known, f"{page.name}: a python block no test runs and FRAGMENTS does not name:\n{block[:300]}"


def test_the_plugins_page_shows_the_readme_s_tested_plugin() -> None:
    readme = next(b for b in python_blocks(ROOT / "README.md") if "noisy_magnitude" in b)
    page = next(b for b in python_blocks(ROOT / "docs" / "plugins.md") if "noisy_magnitude" in b)
    assert page == readme  # the README's copy is the one test_readme_plugin_runs_in_a_lottery runs


def test_user_docs_name_machines_and_commands_not_issues() -> None:
    words = re.compile(r"\b(issue \d+|issue-\d+|this VM|the VM's)", re.I)
    found = [(p.name, m.group(0)) for p in USER_DOCS for m in words.finditer(p.read_text())]
    assert not found, found


def test_the_readme_is_a_front_page() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 220
    order = [next(i for i, line in enumerate(lines) if line.startswith(h)) for h in
             ("# lth", "## Install", "## The quickstart", "## Commands", "## A plugin", "## Documentation")]
    assert order == sorted(order)


def test_the_site_builds_strict_with_the_hook_reference(tmp_path) -> None:
    """``mkdocs build --strict``: a broken link, a missing page or an unresolved docstring
    reference fails; the hook reference holds every hook of the hookspecs."""
    import subprocess

    from lth_core.plugin_api import hookspecs

    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    hooks = (tmp_path / "site" / "hooks" / "index.html").read_text()
    names = [n for n, f in vars(hookspecs).items() if callable(f) and hasattr(f, "lth_spec")]
    assert names and all(f'id="lth_core.plugin_api.hookspecs.{n}"' in hooks for n in names), names
    home = (tmp_path / "site" / "index.html").read_text()
    assert "The quickstart" in home and 'href="python/"' in home  # the README, its links turned to the site's
