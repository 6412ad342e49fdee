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


def test_trials_trained_together_show_one_line_and_count_their_runs_together(tmp_path: Path) -> None:
    """Two trials stacked: one line for both, runs counted in pairs, and the lottery's ETA
    counting the runs left as stacked fits (a step trains every trial), not one by one."""
    recipe = tiny_yaml(tmp_path, trials=2, vectorize_trials=True)
    proc = lth("run", str(recipe), "--out", str(tmp_path / "run"), LTH_PROGRESS_SECONDS="0")
    assert proc.returncode == 0, proc.stderr
    stacked = re.compile(r"trials 0-1 round (\d)/2 \[ticket\] step (\d+)/60  val loss \d+\.\d{4}  run ETA (\d+):(\d\d)  "
                         r"lottery ETA (\d+):(\d\d) \(runs (\d)-(\d)/6\)")
    found = [m for m in map(stacked.fullmatch, proc.stderr.splitlines()) if m]
    assert {int(m.group(1)) for m in found} == {0, 1, 2}, proc.stderr
    for m in found:  # round k trains runs 2k+1 and 2k+2 of 6
        k, first, last = int(m.group(1)), int(m.group(7)), int(m.group(8))
        assert (first, last) == (2 * k + 1, 2 * k + 2)
    assert not re.search(r"trial_\d round", proc.stderr)


def test_the_lottery_eta_counts_stacked_runs_as_one_fit() -> None:
    """8 runs of 100 steps, half way through the first fit, 1 s a step: one by one, 50 + 7 x 100
    steps are left; four trials stacked, 50 + (8 - 4) / 4 x 100 (a step trains all four)."""
    from lth_core.lottery.progress import Progress

    alone, stacked = Progress(8, 100, "lines", together=1), Progress(8, 100, "lines", together=4)
    assert alone.line("round 0/1 [ticket]", 50, 100, None, 1.0).endswith("run ETA 0:50  lottery ETA 12:30 (run 1/8)")
    assert stacked.line("round 0/1 [ticket]", 50, 100, None, 1.0).endswith("run ETA 0:50  lottery ETA 2:30 (runs 1-4/8)")
    for _ in range(4):
        stacked.run_finished(100, 100.0)
    assert stacked.line("round 1/1 [ticket]", 0, 100, None, 1.0).endswith("lottery ETA 1:40 (runs 5-8/8)")
