"""Trials, ticket transfer and `lth report` on real short runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import lth_in_fresh_process
from lth_core import hookimpl
from lth_core.commands import cli
from lth_core.errors import LthError
from lth_core.lottery.rounds import run_lottery
from lth_core.config import validate
from lth_core.reporting.report import Series, choose_rounds, write_report
from lth_core.tickets.ticket import load_ticket
from lth_core.lottery.trials import run_experiment

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trial_run(tmp_path_factory, make_tiny) -> Path:
    """Two trials of a two-round lottery with both controls, on real digits."""
    raw = make_tiny()
    raw.update(trials=2, controls=["random_reinit", "random_pruning"])
    out = tmp_path_factory.mktemp("trials")
    run_experiment(validate(raw), out, say=lambda s: None)
    return out


def test_trials_have_own_seed_and_theta0_and_aggregate(trial_run):
    summary = json.loads((trial_run / "summary.json").read_text())
    assert summary["trials"] == ["trial_0", "trial_1"]
    t0 = json.loads((trial_run / "trial_0" / "summary.json").read_text())
    t1 = json.loads((trial_run / "trial_1" / "summary.json").read_text())
    assert (t0["recipe"]["seed"], t1["recipe"]["seed"]) == (0, 1)
    init0 = load_ticket(trial_run / "trial_0" / "round_0").init
    init1 = load_ticket(trial_run / "trial_1" / "round_0").init
    assert not torch.equal(init0["net.1.weight"], init1["net.1.weight"])
    for k, row in enumerate(summary["rounds"]):
        values = [t0["rounds"][k]["test_acc"], t1["rounds"][k]["test_acc"]]
        assert row["stats"]["test_acc"]["values"] == values
        assert row["test_acc"] == pytest.approx(sum(values) / 2)
        assert row["stats"]["test_acc"]["min"] == min(values)
        assert row["stats"]["test_acc"]["max"] == max(values)
    assert set(summary["controls"]) == {"random_reinit", "random_pruning"}
    assert [r["round"] for r in summary["controls"]["random_reinit"]] == [1, 2]


def test_report_writes_figures_and_tables(trial_run, tmp_path):
    report = write_report([trial_run], tmp_path / "rep")
    text = report.read_text()
    for name in ("accuracy_vs_weights", "early_stop_vs_weights", "curves"):
        png = tmp_path / "rep" / f"{name}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC
        assert f"({name}.png)" in text
    summary = json.loads((trial_run / "summary.json").read_text())
    # The results table shows each round's mean [min, max] over trials.
    r1 = summary["rounds"][1]["stats"]["test_acc"]
    cell = f"{100 * r1['mean']:.2f}"
    assert cell in text
    # Per-layer sparsity comes from the ticket files: round 1 at rate 0.5 keeps 50.0%.
    assert "| 1 | 50.0 | 50.0 | 50.0 | 50.0 |" in text
    assert "oneshot_vs_iterative" not in text
    # The paper's view: dense vs ticket vs controls at the rounds nearest its levels.
    levels = text.split("## At the paper's levels")[1].split("## Results")[0]
    dense = f"{100 * summary['rounds'][0]['test_acc']:.2f}"
    rows = [l for l in levels.splitlines() if l.startswith("| ") and l[2].isdigit()]
    assert [l.split(" | ")[1] for l in rows] == ["0", "1", "2"]
    assert all(dense in l.split(" | ")[2] for l in rows)


def test_report_compares_one_shot_and_iterative(tiny_raw, trial_run, tmp_path):
    tiny_raw["lottery"]["mode"] = "one_shot"
    one_shot = tmp_path / "oneshot"
    run_lottery(validate(tiny_raw), one_shot, say=lambda s: None)
    report = write_report([trial_run, one_shot], tmp_path / "rep")
    assert (tmp_path / "rep" / "oneshot_vs_iterative.png").read_bytes()[:8] == PNG_MAGIC
    assert "(one_shot)" in report.read_text() and "(iterative)" in report.read_text()


def test_report_cli_and_errors(trial_run, tmp_path, capsys):
    assert cli.main(["report", str(trial_run), "--out", str(tmp_path / "r"), "--rounds", "0,2"]) == 0
    assert (tmp_path / "r" / "report.md").is_file()
    assert cli.main(["report", str(tmp_path / "nothing"), "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no summary.json" in err[0]
    assert cli.main(["report", str(trial_run), "--out", str(tmp_path / "r3"), "--rounds", "a,b"]) == 2


def test_choose_rounds_prefers_paper_levels():
    rows = [{"round": k, "weights_remaining": 0.8**k} for k in range(17)]
    assert choose_rounds(rows) == [0, 3, 7, 12, 15]


def test_ticket_transfer_trains_the_given_ticket(trial_run, tiny_raw, tmp_path):
    """A ticket found on one run trains on another recipe: same mask, same start weights."""
    source = trial_run / "trial_0" / "round_2"
    tiny_raw["ticket"] = str(source)
    tiny_raw["controls"] = ["random_reinit"]
    tiny_raw["data"]["val_size"] = 0.2  # a different split: the ticket is used, not searched
    summary = run_lottery(validate(tiny_raw), tmp_path / "transfer", say=lambda s: None)
    src = load_ticket(source)
    got = load_ticket(tmp_path / "transfer" / "round_1")
    assert got.mask == src.mask
    assert all(torch.equal(got.init[k], src.init[k]) for k in src.init)
    assert summary["transferred_from"]["path"] == str(source)
    assert [r["round"] for r in summary["rounds"]] == [0, 1]
    assert summary["rounds"][1]["weights_remaining"] == pytest.approx(src.mask.density())
    assert len(summary["controls"]["random_reinit"]) == 1


def test_ticket_transfer_refuses_another_architecture(trial_run, tiny_raw, tmp_path):
    tiny_raw["ticket"] = str(trial_run / "trial_0" / "round_1")
    tiny_raw["model"]["hidden"] = [48, 32]
    with pytest.raises(LthError, match="does not fit this model"):
        run_lottery(validate(tiny_raw), tmp_path / "bad", say=lambda s: None)
    assert not (tmp_path / "bad" / "summary.json").exists()


def test_series_reads_single_and_trial_runs(trial_run):
    s = Series.from_dir(trial_run)
    assert len(s.trial_dirs) == 2 and s.mode == "iterative"
    assert set(s.runs()) == {"ticket", "random_reinit", "random_pruning"}


# --- report sections ------------------------------------------------------------------------


def test_report_on_a_run_folder_imports_neither_plugins_nor_torch(trial_run, tmp_path):
    """``lth report`` on run folders stays torch-free: lth's own command modules (all
    imported to build the parser) are cheap and no entry-point plugin is loaded. A folder
    that does not exist fails just as lightly."""
    status, heavy = lth_in_fresh_process("report", str(trial_run), "--out", str(tmp_path / "rep"))
    assert (status, heavy) == (0, [])
    assert (tmp_path / "rep" / "report.md").is_file()
    status, heavy = lth_in_fresh_process("report", str(tmp_path / "typo"), "--out", str(tmp_path / "rep2"))
    assert (status, heavy) == (2, [])
    assert not (tmp_path / "rep2").exists()


class NotesSection:
    """A throwaway plugin: folders holding notes.txt get one section listing their notes."""

    def __init__(self) -> None:
        self.rendered: list[list[Path]] = []

    @hookimpl
    def register_report_sections(self, register):
        register("notes", lambda folder: (folder / "notes.txt").is_file(), self.render)

    def render(self, folders: list[Path], out: Path) -> list[str]:
        self.rendered.append(folders)
        (out / "notes_figure.txt").write_text("a figure would go here")
        return ["## Notes", "", *(f"- `{f.name}`: {(f / 'notes.txt').read_text()}" for f in folders), ""]


def _notes(folder: Path, text: str) -> Path:
    folder.mkdir()
    (folder / "notes.txt").write_text(text)
    return folder


def test_a_plugins_report_section_renders_the_folders_it_claims(pm, trial_run, tmp_path):
    """A plugin's section gets every folder it claims, in the user's order, in one call,
    and its lines follow the runs' in report.md; its figures land in the report folder."""
    plugin = NotesSection()
    pm.register(plugin, name="notes-plugin")
    a, b = _notes(tmp_path / "a", "first"), _notes(tmp_path / "b", "second")
    assert cli.main(["report", str(b), str(trial_run), str(a), "--out", str(tmp_path / "rep")]) == 0
    assert plugin.rendered == [[b, a]]
    text = (tmp_path / "rep" / "report.md").read_text()
    assert text.index("## Results:") < text.index("## Notes") < text.index("- `b`: second") < text.index("- `a`: first")
    assert (tmp_path / "rep" / "notes_figure.txt").is_file()


def test_a_folder_no_section_claims_is_one_line_naming_it(tmp_path, capsys):
    """An existing folder that is neither a run nor any section's kind: one line naming the
    folder, what lth report reads (summary.json and the installed sections), and nothing written."""
    (tmp_path / "stray").mkdir()
    assert cli.main(["report", str(tmp_path / "stray"), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"lth: error: {tmp_path / 'stray'} is not a finished run: no summary.json (run `lth run RECIPE "
                   f"--out {tmp_path / 'stray'}` first), and no report section (extension, merge) claims it"]
    assert not (tmp_path / "rep").exists()


class BrokenSections:
    """Report sections that break their contract, one per way."""

    @hookimpl
    def register_report_sections(self, register):
        register("maybe", lambda folder: None if (folder / "maybe").exists() else False, lambda folders, out: [])
        register("crashes", lambda folder: (folder / "crashes").exists(), lambda folders, out: {}["figure"])
        register("tuple", lambda folder: (folder / "tuple").exists(), lambda folders, out: ("## Tuple",))


@pytest.mark.parametrize("kind, message", [
    ("maybe", "report section 'maybe' (plugin 'broken-sections'): claims returned NoneType, not True or False"),
    ("crashes", "report section 'crashes' (plugin 'broken-sections') raised KeyError: 'figure'"),
    ("tuple", "report section 'tuple' (plugin 'broken-sections'): render returned tuple, not a list of report.md lines (str)"),
])
def test_a_broken_report_section_is_one_line_naming_it(pm, tmp_path, capsys, kind, message):
    pm.register(BrokenSections(), name="broken-sections")
    folder = tmp_path / kind
    folder.mkdir()
    (folder / kind).write_text("")
    assert cli.main(["report", str(folder), "--out", str(tmp_path / "rep")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"lth: error: {message}"]
    assert not (tmp_path / "rep" / "report.md").exists()


def test_a_section_registered_without_render_is_named(pm, tmp_path, capsys):
    """``register(name, claims)`` alone cannot render: refused as soon as a folder is asked."""
    class Half:
        @hookimpl
        def register_report_sections(self, register):
            register("half", lambda folder: True)

    pm.register(Half(), name="half-plugin")
    (tmp_path / "x").mkdir()
    assert cli.main(["report", str(tmp_path / "x"), "--out", str(tmp_path / "rep")]) == 2
    assert capsys.readouterr().err.strip() == ("lth: error: plugin 'half-plugin' registered the report section 'half' "
                                               "without its two functions: register(name, claims, render)")
