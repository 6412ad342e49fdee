"""Growing a finished experiment: rerunning it with more ``lottery.rounds`` or ``trials``
into the same folder reuses what it has and ends where a fresh run of the grown recipe
ends; any other change is still refused, naming what differs. Real tiny lotteries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

import lth_core
from conftest import with_changes


def _run(raw: dict, out: Path, **changes) -> tuple[dict, list[str]]:
    said: list[str] = []
    lth_core.run(with_changes(raw, **changes), out=out, say=said.append)
    return json.loads((out / "summary.json").read_text()), said


def _same_numbers(a: dict, b: dict) -> None:
    assert a["rounds"] == b["rounds"] and a["controls"] == b["controls"]


def _same_weights(a: Path, b: Path) -> None:
    fa, fb = load_file(str(a / "final.safetensors")), load_file(str(b / "final.safetensors"))
    assert all((fa[k] == fb[k]).all() for k in fa)


def test_more_rounds_reuse_the_finished_ones_and_end_as_a_fresh_run(tiny_raw, tmp_path: Path) -> None:
    raw = with_changes(tiny_raw, controls=["random_reinit"])
    _run(raw, tmp_path / "grown")
    grown, said = _run(raw, tmp_path / "grown", lottery__rounds=3)
    fresh, _ = _run(raw, tmp_path / "fresh", lottery__rounds=3)
    assert any(line.startswith("growing") and "lottery.rounds 2 -> 3" in line for line in said)
    reused = {line.split(":")[0] for line in said if "reusing finished ticket" in line}
    assert reused == {"round 0 [ticket]", "round 1 [ticket]", "round 1 [random_reinit]", "round 2 [ticket]", "round 2 [random_reinit]"}
    _same_numbers(grown, fresh)
    _same_weights(tmp_path / "grown" / "round_3", tmp_path / "fresh" / "round_3")
    assert json.loads((tmp_path / "grown" / "run.json").read_text())["grown_from"]


def test_more_trials_make_the_single_run_trial_0(tiny_raw, tmp_path: Path) -> None:
    _run(tiny_raw, tmp_path / "grown")
    grown, said = _run(tiny_raw, tmp_path / "grown", trials=2)
    fresh, _ = _run(tiny_raw, tmp_path / "fresh", trials=2)
    assert sum("reusing finished ticket" in line for line in said) == 3  # trial 0's three rounds
    assert not (tmp_path / "grown" / "round_0").exists() and (tmp_path / "grown" / "trial_0" / "round_2" / "ticket.json").is_file()
    _same_numbers(grown, fresh)
    _same_weights(tmp_path / "grown" / "trial_1" / "round_2", tmp_path / "fresh" / "trial_1" / "round_2")


@pytest.mark.parametrize(("changes", "message"), [
    ({"lottery__rate": 0.3}, "lottery.rate 0.5 -> 0.3); only more lottery.rounds or trials continue a folder"),
    ({"lottery__rounds": 3, "seed": 1}, "lottery.rounds 2 -> 3, seed 0 -> 1)"),
    ({"lottery__rounds": 1}, "lottery.rounds 2 -> 1); it holds more lottery.rounds than this recipe asks for"),
])
def test_other_changes_are_refused_naming_them(tiny_raw, tmp_path: Path, changes: dict, message: str) -> None:
    _run(tiny_raw, tmp_path / "run")
    with pytest.raises(lth_core.LthError, match="holds a run of a different recipe") as err:
        _run(tiny_raw, tmp_path / "run", **changes)
    assert message in str(err.value)
