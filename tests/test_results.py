"""Where results are: ``lth run`` ends by naming its summary, figures and W&B run and what
to run next; ``lth report DIR`` writes ``DIR/report``; Ctrl-C ends with one line naming the
folder and the command that resumes it (exit 130), and the resumed run continues the same
W&B run. Real ``lth`` subprocesses on the tiny digits recipe."""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
from pathlib import Path

from test_cli import LTH, _env, assert_user_error, lth, tiny_yaml


def test_a_run_ends_saying_where_its_results_are_and_what_next(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = lth("run", str(tiny_yaml(tmp_path)), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    tail = proc.stderr[proc.stderr.index(f"results in {out}:"):]
    figures = sorted(p.name for p in (out / "report").glob("*.png"))
    assert figures and (out / "report" / "report.md").is_file()  # lth run writes its report
    assert "summary.json" in tail and all(f in tail for f in figures)
    assert "next:" in tail and f"lth report {out}" in tail and f"--out {out}" in tail
    assert proc.stdout.strip() == str(out / "summary.json")


def test_report_of_one_folder_goes_into_it(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert lth("run", str(tiny_yaml(tmp_path)), "--out", str(out), "--quiet").returncode == 0
    for p in (out / "report").iterdir():
        p.unlink()
    proc = lth("report", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out / "report" / "report.md")
    assert (out / "report" / "accuracy_vs_weights.png").is_file()
    assert_user_error(lth("report", str(out), str(out)), "--out")  # two folders: where the comparison goes is asked


def _offline_runs(out: Path) -> list[Path]:
    return sorted((out / "wandb").glob("offline-run-*"))


def test_ctrl_c_names_the_folder_and_the_resume_command_and_resume_continues_the_wandb_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    recipe = tiny_yaml(tmp_path, trainer={"max_steps": 400, "val_check_interval": 20},
                       tracking={"backend": "wandb", "project": "lth-tests", "mode": "offline"})
    proc = subprocess.Popen([*LTH, "run", str(recipe), "--out", str(out)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(LTH_PROGRESS_SECONDS="0"))
    seen = []
    for line in proc.stderr:  # interrupt round 1 while it trains
        seen.append(line)
        if line.startswith("round 1/2 [ticket] step"):
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=300) == 130, "".join(seen) + rest
    lines = rest.strip().splitlines()
    assert "Traceback" not in rest
    last = lines[-1]
    assert last.startswith("lth: interrupted:") and str(out) in last, lines
    command = last.split("continue with: ")[1]
    assert command == f"lth run --resume {out}"
    assert not (out / "summary.json").exists() and (out / "round_0" / "ticket.json").is_file()

    again = subprocess.run([*LTH, *shlex.split(command)[1:]], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           env=_env(), timeout=600)
    assert again.returncode == 0, again.stderr
    assert "round 0 [ticket]: reusing finished ticket" in again.stderr
    run_id = (out / "wandb_run_id").read_text().strip()
    runs = _offline_runs(out)
    assert len(runs) == 2 and all(r.name.endswith(f"-{run_id}") for r in runs)  # one W&B run, two sessions
    assert json.loads((out / "summary.json").read_text())["rounds"][-1]["round"] == 2
    assert re.search(rf"W&B run {run_id} \(offline; upload with: wandb sync ", again.stderr)
