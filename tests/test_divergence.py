"""A round whose loss becomes NaN/inf stops with one clear error; earlier rounds stay."""

from __future__ import annotations

import json

import pytest

from lth_core import hookimpl
from lth_core.errors import LthError, NonFiniteLoss
from lth_core.lottery.rounds import run_lottery
from lth_core.config import validate
from lth_core.tickets.ticket import is_ticket, load_ticket


class Explode:
    """A throwaway rewind policy that returns huge weights: round 1 cannot train."""

    @hookimpl
    def register_rewind_policies(self, register):
        def explode(model, mask, context):
            return {k: v.detach().cpu() * 1e30 if v.is_floating_point() else v for k, v in model.state_dict().items()}

        register("explode", explode)


def test_a_diverging_round_stops_and_keeps_earlier_rounds(tiny_raw, tmp_path, pm):
    plugin = Explode()
    pm.register(plugin, name="explode-plugin")
    try:
        tiny_raw["lottery"].update(rewind="explode", rounds=2)
        with pytest.raises(NonFiniteLoss, match=r"round 1 \[ticket\] diverged: the training loss is (nan|inf) at step 0"):
            run_lottery(validate(tiny_raw), tmp_path, say=lambda s: None, pm=pm)
    finally:
        pm.unregister(plugin)
    assert is_ticket(tmp_path / "round_0") and load_ticket(tmp_path / "round_0").meta["metrics"]["test_acc"] > 0.5
    assert not is_ticket(tmp_path / "round_1") and not (tmp_path / "round_2").exists()
    failure = json.loads((tmp_path / "round_1" / "failure.json").read_text())
    assert failure["round"] == 1 and "loss is" in failure["error"]
    assert not (tmp_path / "summary.json").exists()


def test_the_cli_reports_divergence_in_one_line(tiny_raw, tmp_path):
    """A learning rate of 1e8 blows up at once: exit 2, one line, nothing saved for the round."""
    import subprocess
    import sys

    import yaml

    tiny_raw["optimizer"] = {"name": "sgd", "lr": 1.0e8}
    tiny_raw["lottery"]["rounds"] = 0
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_raw))
    proc = subprocess.run([sys.executable, "-m", "lth_core.commands.cli", "run", str(recipe), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("lth: error: round 0 [ticket] diverged: the ") and "lower optimizer.lr" in last
    assert "Traceback" not in proc.stderr and not is_ticket(tmp_path / "run" / "round_0")
    assert issubclass(NonFiniteLoss, LthError)
