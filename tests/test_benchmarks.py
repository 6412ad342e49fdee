"""The speed benchmarks still run and end with the JSON line the README and issue 8 name.

A few steps each on the real Fashion-MNIST tensors: this checks that the scripts work and
report every ratio, never how fast anything is (speed is measured by running them).
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _last_json(script: str, args: list[str], monkeypatch, capsys) -> dict:
    """Run ``benchmarks/<script>``'s ``main`` in this process (one thread, as every test)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setattr(sys, "argv", [script, *args])
    importlib.import_module(script.removesuffix(".py")).main()
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _ratio(value) -> None:
    assert isinstance(value, float) and math.isfinite(value) and value > 0


def test_overhead_reports_both_ratios(monkeypatch, capsys) -> None:
    out = _last_json("overhead.py", ["--steps", "30", "--repeats", "1"], monkeypatch, capsys)
    _ratio(out["lth_vs_raw"])
    _ratio(out["modelpruning_vs_lth"])


def test_vectorised_trials_reports_every_ratio(monkeypatch, capsys) -> None:
    out = _last_json("vectorised_trials.py", ["--k", "2", "--steps", "50", "--repeats", "1"], monkeypatch, capsys)
    for key in ("stacked_vs_sequential", "batched_vs_sequential", "paired_stacked_vs_sequential",
                "paired_batched_vs_sequential", "paired_parallel_vs_sequential", "paired_batched_vs_best_sequential",
                "paired_parallel_vs_best_sequential", "cpu_stacked_vs_sequential"):
        _ratio(out[key])
    assert out["k"] == 2 and set(out["ms_per_network_step"]) == {"sequential", "sequential_per_step", "stacked", "batched", "parallel"}


def test_torch_func_comparison_reports_speed_and_distance(monkeypatch, capsys) -> None:
    out = _last_json("torch_func.py", ["--k", "2", "--steps", "3", "--repeats", "1", "--threads", "1"], monkeypatch, capsys)
    _ratio(out["batched_vs_sequential"])
    _ratio(out["func_vs_sequential"])
    assert set(out["max_weight_diff"]) == {"batched", "func"} and all(math.isfinite(v) for v in out["max_weight_diff"].values())


def test_own_module_comparison_reports_both_runs(monkeypatch, capsys, tmp_path) -> None:
    out = _last_json("own_module.py", ["--rounds", "1", "--steps", "20", "--out", str(tmp_path)], monkeypatch, capsys)
    assert [r["round"] for r in out["rounds"]] == [0, 1] and out["rounds"][1]["weights_remaining"] < 1.0
    _ratio(out["own_vs_native"])
    _ratio(out["own_vs_plain_lightning"])


@pytest.mark.parametrize("args", [[], ["--devices", "2"], ["--trials", "2", "--vectorize", "batched"]],
                         ids=["one_process", "data_parallel", "stacked_trials"])
def test_process_costs_reports_every_part_and_the_peak_memory(args, monkeypatch, capsys) -> None:
    """A short lottery on the digits: every part of the time, shares summing to one, the
    peak memory of every process (data parallel: two)."""
    out = _last_json("process_costs.py", ["--data", "digits", "--steps", "20", *args], monkeypatch, capsys)
    parts = {"imports", "data", "setup", "training", "evaluation", "pruning", "tickets", "checkpoints", "figures", "wandb", "other"}
    assert set(out["share"]) == set(out["cpu_s"]) == parts
    assert abs(sum(out["share"].values()) - 1.0) < 0.01 and out["share"]["imports"] > 0 and out["share"]["training"] > 0
    assert out["processes"] == (2 if "--devices" in args else 1) == len(out["peak_rss_per_process_mb"])
    assert all(m > 0 for m in out["peak_rss_per_process_mb"]) and out["peak_rss_at_exit_mb"] >= out["peak_rss_mb"] * 0.9
    _ratio(out["wall_s"])


def test_moving_masks_table_has_each_method_at_its_density(monkeypatch, capsys, tmp_path) -> None:
    """A few steps of three of the table's runs: they finish, and each ticket has the density
    its method promises (RigL exactly IMP's 10-round density; soft movement whatever its
    penalty leaves; SNIP one global prune to the same count)."""
    only = ["rigl_10", "movement_soft_10", "snip_10"]
    out = _last_json("moving_masks.py", [str(tmp_path), "--steps", "30", "--seeds", "0", "--jobs", "1", "--only", *only],
                     monkeypatch, capsys)
    assert out["failed"] == []
    found = out["results"]
    assert set(found) == {"rigl/ticket/10", "movement_soft/ticket/10", "snip/ticket/10", "snip/random_pruning/10"}
    target = out["densities"]["10"]
    for key in ("rigl/ticket/10", "snip/ticket/10", "snip/random_pruning/10"):
        assert found[key]["weights_remaining"] == pytest.approx(target, abs=2e-5)
    assert 0 < found["movement_soft/ticket/10"]["weights_remaining"] <= 1
    assert all(0.1 < r["test_acc_final"] <= 1 for r in found.values())  # 30 steps already beat chance (0.1)
    assert (tmp_path / "table.md").read_text().count("not run") > 0


def test_data_paths_reports_augmentation_throughput_and_memory(monkeypatch, capsys) -> None:
    """A few steps on real images written as PNGs: every number of both data paths."""
    out = _last_json("data_paths.py", ["--images", "300", "--steps", "10", "--side", "16"], monkeypatch, capsys)
    assert set(out["augment_ms"]) == {"fashion_mnist_b60", "cifar_shaped_b128"}
    _ratio(out["augment_vs_lenet300_step"])
    assert set(out["images_per_s"]) == {"tensor", "stream_workers_0", "stream_workers_2"}
    assert set(out["train_steps_per_s"]) == {"tensor", "stream_workers_2"}
    _ratio(out["stream_vs_tensor_images_per_s"])
    _ratio(out["stream_vs_tensor_train_steps_per_s"])
    assert set(out["peak_mb"]) == {"stream_75", "stream_300", "tensor_300"}
    assert all(v["peak_rise_mb"] >= 0 for v in out["peak_mb"].values()) and out["data_mb"] > 0
    assert len(out["peak_mb"]["stream_300"]["worker_private_mb"]) == 2 and set(out["stream_peak_rise_mb"]) == {"75", "300"}
