"""The machine's own state: output that cannot be created, written or renamed.

Every command that writes (``lth run``, ``merge``, ``export``, ``report``, ``extend``) meets
three real failures, each one line naming the path and the cause, exit status 2, no
traceback: an ``--out`` that is an existing file, an ``--out`` on a read-only file system,
and a file system that fills up while the command writes. The last two are real tmpfs
mounts (the tests run as root); where mounting is not allowed they are skipped. A full
disk in the middle of a lottery keeps every finished round, and a rerun once there is
room continues to the numbers of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from conftest import assert_same_data
from lth_core.commands import cli
from lth_core.config import validate
from lth_core.lottery.rounds import run_lottery
from lth_core.tickets.ticket import load_ticket


@contextlib.contextmanager
def tmpfs(folder: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """A real tmpfs of ``size`` mounted at ``folder`` for the block (skips where not allowed)."""
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (tests run as root where they can): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def remount(folder: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True)


def fill(folder: Path) -> None:
    """Write into ``folder`` until its file system is full, leaving no byte free."""
    with open(folder / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
        while f.write(b"\0" * 4096):
            pass


def refused(capsys, *argv: str) -> str:
    """Run ``lth ARGV`` in this process; it must exit 2 with one error line, no traceback."""
    assert cli.main(list(argv)) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("lth: error:")]
    assert len(lines) == 1 and err.rstrip("\n").splitlines()[-1] == lines[0], err
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, make_tiny) -> Path:
    """A finished two-round lottery of the tiny recipe (its tickets feed merge, export, extend)."""
    root = tmp_path_factory.mktemp("finished")
    raw = make_tiny()
    raw["data"]["classes"] = [0, 1, 2, 3, 4]
    run_lottery(validate(raw), root / "run", say=lambda s: None)
    (root / "recipe.yaml").write_text(yaml.safe_dump(raw))
    extension = {k: v for k, v in make_tiny().items() if k not in ("lottery", "controls")}
    extension["extend"] = {"classes": [5, 6, 7], "baselines": False}
    (root / "extend.yaml").write_text(yaml.safe_dump(extension))
    return root


def _commands(root: Path) -> dict:
    """Each writing command with ``--out`` left to the test."""
    run = root / "run"
    return {
        "run": lambda out: ["run", str(root / "recipe.yaml"), "--out", str(out)],
        "merge": lambda out: ["merge", str(run / "round_1"), str(run / "round_2"), "--strategy", "average", "--out", str(out)],
        "export": lambda out: ["export", str(run / "round_2"), "--out", str(out)],
        "report": lambda out: ["report", str(run), "--out", str(out)],
        "extend": lambda out: ["extend", str(run / "round_2"), "--recipe", str(root / "extend.yaml"), "--out", str(out)],
    }


COMMANDS = ["run", "merge", "export", "report", "extend"]


@pytest.mark.parametrize("command", COMMANDS)
def test_an_out_that_is_a_file_is_one_line(finished, tmp_path, capsys, command):
    blocker = tmp_path / "taken"
    blocker.write_text("someone's notes\n")
    out = blocker / "model.pt2" if command == "export" else blocker  # export's FILE goes in a folder
    line = refused(capsys, *_commands(finished)[command](out))
    if command == "merge":  # merge refuses an --out that is not a new or empty folder before it starts
        assert line == f"lth: error: --out {blocker} already holds other files; choose a new folder or delete it"
    else:
        assert line == f"lth: error: cannot create the folder {blocker}: {blocker} is a file, not a folder", line
    assert blocker.read_text() == "someone's notes\n"


@pytest.mark.parametrize("command", COMMANDS)
def test_an_out_on_a_read_only_file_system_is_one_line(finished, tmp_path, capsys, command):
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as ro:
        out = ro / "out" / ("model.pt2" if command == "export" else "")
        line = refused(capsys, *_commands(finished)[command](out))
    folder = ro / "out"
    assert line == f"lth: error: cannot create the folder {folder}: Read-only file system", line


@pytest.mark.parametrize("command", ["merge", "export", "report", "extend"])
def test_a_full_disk_is_one_line_naming_the_file(finished, tmp_path, capsys, command):
    with tmpfs(tmp_path / "full", "256k") as full:
        (full / "out").mkdir()
        fill(full)
        out = full / "out" / ("model.pt2" if command == "export" else "result")
        line = refused(capsys, *_commands(finished)[command](out))
        assert line.startswith(f"lth: error: cannot write {full / 'out'}/") and line.endswith(": No space left on device"), line
        leftovers = [p.name for p in (full / "out").rglob("*") if ".tmp" in p.name]
    assert leftovers == [], "a temporary file was left behind"


def test_a_disk_that_fills_mid_lottery_keeps_finished_rounds_and_resumes(finished, tmp_path, capsys, make_tiny):
    """A 4-round lottery on a 300 KiB file system: it stops in a later round with one line;
    the rounds before it are intact tickets; with room again, the same command finishes
    with exactly the numbers of a run that never stopped."""
    raw = make_tiny()
    raw["lottery"]["rounds"] = 4
    recipe = tmp_path / "four.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    assert cli.main(["run", str(recipe), "--out", str(tmp_path / "whole")]) == 0
    with tmpfs(tmp_path / "small", "300k") as small:
        out = small / "run"
        line = refused(capsys, "run", str(recipe), "--out", str(out))
        assert line.startswith(f"lth: error: cannot write {out}/round_") and line.endswith(": No space left on device"), line
        kept = sorted(p.parent.name for p in out.glob("round_*/ticket.json"))
        assert kept and "round_4" not in kept, kept
        for name in kept:
            load_ticket(out / name)  # every finished round is a sound ticket (checksums verified)
        assert not list(out.rglob(".*.tmp*")), "a temporary file was left behind"
        remount(small, "8m")
        assert cli.main(["run", str(recipe), "--out", str(out)]) == 0
        err = capsys.readouterr().err
        assert sum("reusing finished ticket" in e for e in err.splitlines()) == len(kept), err
        got = json.loads((out / "summary.json").read_text())
        shutil.copytree(out, tmp_path / "copy")  # keep it past the unmount for a failure's post-mortem
    want = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert_same_data({k: got[k] for k in ("rounds", "controls")}, {k: want[k] for k in ("rounds", "controls")})
