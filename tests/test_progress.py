"""Progress while a lottery trains: each run's step/total, last validation loss and ETA,
the whole lottery's ETA; plain lines in a log, one redrawn line on a terminal, nothing
with ``--quiet``. Real ``lth run`` subprocesses on the tiny digits recipe."""

from __future__ import annotations

import os
import pty
import re
import subprocess
from pathlib import Path

from test_cli import LTH, _env, lth, tiny_yaml

#: ``round 1/2 [ticket] step 40/60  val loss 0.1234  run ETA 0:01  lottery ETA 0:03 (run 2/3)``
LINE = re.compile(r"round (\d)/2 \[ticket\] step (\d+)/60  val loss (\d+\.\d{4})  run ETA \d+:\d\d  "
                  r"lottery ETA \d+:\d\d \(run (\d)/3\)")


def test_a_log_gets_plain_progress_lines_with_step_loss_and_etas(tmp_path: Path) -> None:
    proc = lth("run", str(tiny_yaml(tmp_path)), "--out", str(tmp_path / "run"), LTH_PROGRESS_SECONDS="0")
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr  # a file or CI log: no carriage-return noise
    found = [LINE.fullmatch(line) for line in proc.stderr.splitlines()]
    found = [m for m in found if m]
    assert {int(m.group(1)) for m in found} == {0, 1, 2}  # every run of the lottery reports
    for m in found:  # round k is run k+1 of 3 (no controls), its step within the budget
        assert int(m.group(4)) == int(m.group(1)) + 1 and 0 < int(m.group(2)) <= 60
    # the loss shown is the run's last evaluation: one of the values its curve recorded
    import json
    curve = json.loads((tmp_path / "run" / "round_2" / "curves.json").read_text())
    last_round = [m for m in found if m.group(1) == "2"]
    assert {m.group(3) for m in last_round} <= {f"{row['val_loss']:.4f}" for row in curve}


def test_quiet_prints_the_summary_path_only(tmp_path: Path) -> None:
    proc = lth("run", str(tiny_yaml(tmp_path)), "--out", str(tmp_path / "run"), "--quiet", LTH_PROGRESS_SECONDS="0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.strip() == str(tmp_path / "run" / "summary.json")


def test_a_terminal_gets_one_line_redrawn_in_place(tmp_path: Path) -> None:
    """Under a pseudo-terminal the progress is redrawn with carriage returns and cleared
    before the run's result line, which stays on a line of its own."""
    leader, follower = pty.openpty()
    recipe = tiny_yaml(tmp_path)
    proc = subprocess.Popen([*LTH, "run", str(recipe), "--out", str(tmp_path / "run")], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=follower, env=_env())
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=600) == 0
    text = b"".join(chunks).decode()
    assert "\r\x1b[K" in text and re.search(r"\r\x1b\[Kround \d/2 \[ticket\] step \d+/60 \[#*-*\]  ", text)  # with its bar
    for line in text.replace("\r\n", "\n").split("\n"):  # every result line starts clean
        if "weights remaining" in line:
            assert line.split("\r\x1b[K")[-1].startswith("round ")
