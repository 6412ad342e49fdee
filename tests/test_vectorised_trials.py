"""``vectorize_trials``: trials trained as one stacked model give the sequential results.

One tiny lottery on scikit-learn's digits (3 trials, rounds 2, both controls) runs once
sequentially and once stacked; every ticket of every trial is compared: the same masks
and start weights, the same trained weights bit for bit, curves and metrics within float
rounding, and the same aggregated summary; ``batched`` agrees within rounding, ``parallel``
(two worker threads) bit for bit. An MLP with
dropout (its draws replayed per trial) must agree as well. Then what is refused, in one line.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY, assert_same_data
from lth_core.engines import checkpoints
from lth_core.engines import stacked as stacking
from lth_core.errors import LthError, NonFiniteLoss
from lth_core.config import validate
from lth_core.lottery.trials import run_experiment

ATOL = 1e-4
CONTROLS = ["random_reinit", "random_pruning"]


def _raw(**top) -> dict:
    raw = copy.deepcopy(TINY)
    raw.update(top)
    return raw


def _run(raw: dict, out: Path, monkeypatch=None, groups: list | None = None) -> dict:
    """Run an experiment; with ``groups``, record every stacked fit (size, batched path)."""
    if groups is not None:
        real = stacking._fit_group

        def spy(jobs, batched=False):
            groups.append({"trials": [j.trial for j in jobs], "runs": {j.module.log_prefix.rstrip("/") for j in jobs},
                           "steps_per_call": {j.module.steps_per_call for j in jobs}})
            real(jobs, batched)

        monkeypatch.setattr(stacking, "_fit_group", spy)
        real_init = stacking.StackedModule.__init__

        def record_path(self, *args, **kwargs):
            real_init(self, *args, **kwargs)
            groups[-1]["batched"] = self.batched
            groups[-1]["workers"] = self.workers

        monkeypatch.setattr(stacking.StackedModule, "__init__", record_path)
    return run_experiment(validate(raw, name="tiny"), out, say=lambda _: None)


def _compare_runs(seq: Path, vec: Path, weight_atol: float | None = None) -> int:
    """Every ticket folder of ``seq`` has its twin in ``vec``; returns how many were compared.

    Trained weights bit for bit, or within ``weight_atol``; curves and metrics within ATOL."""
    tickets = sorted(p.parent.relative_to(seq) for p in seq.rglob("ticket.json"))
    assert tickets == sorted(p.parent.relative_to(vec) for p in vec.rglob("ticket.json"))
    for rel in tickets:
        a, b = seq / rel, vec / rel
        for name in ("mask", "init"):  # the lottery's choices: exactly the same
            ta, tb = load_file(str(a / f"{name}.safetensors")), load_file(str(b / f"{name}.safetensors"))
            assert set(ta) == set(tb) and all(torch.equal(ta[k], tb[k]) for k in ta), f"{rel}: {name} differs"
        fa, fb = load_file(str(a / "final.safetensors")), load_file(str(b / "final.safetensors"))
        for k in fa:
            same = torch.equal(fa[k], fb[k]) if weight_atol is None else torch.allclose(fa[k], fb[k], atol=weight_atol, rtol=0)
            assert same, f"{rel}: trained {k} differs by {(fa[k] - fb[k]).abs().max()}"
        assert_same_data(json.loads((a / "curves.json").read_text()), json.loads((b / "curves.json").read_text()), f"{rel}/curves", abs_tol=ATOL)
        ma, mb = json.loads((a / "ticket.json").read_text()), json.loads((b / "ticket.json").read_text())
        assert_same_data(ma["metrics"], mb["metrics"], f"{rel}/metrics", abs_tol=ATOL)
        assert ma["recipe_hash"] == mb["recipe_hash"] and ma["seed"] == mb["seed"]
    return len(tickets)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same 3-trial lottery run sequentially and stacked (with the stacked fits recorded)."""
    root = tmp_path_factory.mktemp("vec")
    raw = _raw(trials=3, controls=list(CONTROLS))
    seq = _run(raw, root / "seq")
    groups: list = []
    with pytest.MonkeyPatch.context() as monkeypatch:
        vec = _run({**raw, "vectorize_trials": True}, root / "vec", monkeypatch, groups)
    return root, seq, vec, groups


def test_every_stacked_replicate_equals_its_sequential_trial(pair) -> None:
    """Same masks and θ0 every round (ticket and controls), trained weights bit for bit,
    curves and metrics within 1e-4 (evaluation sums in its own order)."""
    root, _, _, _ = pair
    assert _compare_runs(root / "seq", root / "vec") == 3 * (3 + 2 * 2)  # trials x (rounds + controls of rounds 1, 2)
    for i in range(3):
        assert_same_data(json.loads((root / "seq" / f"trial_{i}" / "summary.json").read_text())["rounds"],
               json.loads((root / "vec" / f"trial_{i}" / "summary.json").read_text())["rounds"], f"trial_{i}", abs_tol=ATOL)


def test_batched_mode_equals_sequential_within_rounding(pair, tmp_path, monkeypatch) -> None:
    """``vectorize_trials: batched``: the MLP through batched matrix products; the same
    masks and θ0, every curve and the summary within 1e-4 on this short run.

    Trained weights are compared within one Adam step (lr): Adam moves a weight by about lr
    whatever its gradient's size, so where a gradient is ~0 and rounds to the other sign,
    that one weight moves apart by up to lr while the network's function does not (seen:
    one weight 2.4e-4 apart in one of 21 runs, every loss within 1e-5)."""
    root, seq, _, _ = pair
    groups: list = []
    raw = {**_raw(trials=3, controls=list(CONTROLS)), "vectorize_trials": "batched"}
    batched = _run(raw, tmp_path / "batched", monkeypatch, groups)
    assert len(groups) == 7 and all(g["batched"] for g in groups)
    lr = TINY["optimizer"]["lr"]
    assert _compare_runs(root / "seq", tmp_path / "batched", weight_atol=lr) == 3 * (3 + 2 * 2)
    assert_same_data(seq["rounds"], batched["rounds"], "rounds", abs_tol=ATOL)
    assert_same_data(seq["controls"], batched["controls"], "controls", abs_tol=ATOL)


def test_parallel_mode_equals_sequential_bit_for_bit(pair, tmp_path, monkeypatch) -> None:
    """``vectorize_trials: parallel`` on two threads: the 3 trials' steps shared out over 2
    worker threads of one intra-op thread each; every trained weight is the sequential
    (one-thread) run's bit for bit, curves and metrics within 1e-4 (evaluation runs on the
    main thread's two threads)."""
    root, seq, _, _ = pair
    groups: list = []
    raw = {**_raw(trials=3, controls=list(CONTROLS)), "vectorize_trials": "parallel"}
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        parallel = _run(raw, tmp_path / "parallel", monkeypatch, groups)
    finally:
        torch.set_num_threads(threads)
    assert len(groups) == 7 and all(g["workers"] == 2 and not g["batched"] for g in groups)
    assert _compare_runs(root / "seq", tmp_path / "parallel") == 3 * (3 + 2 * 2)
    assert_same_data(seq["rounds"], parallel["rounds"], "rounds", abs_tol=ATOL)


def test_parallel_mode_follows_the_learning_rate_schedule(tmp_path, monkeypatch) -> None:
    """Warmup and a milestone: each worker steps at the rate the sequential run's scheduler
    sets, so the weights still agree bit for bit."""
    raw = _raw(trials=2)
    raw["optimizer"] = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "warmup_steps": 15, "milestones": [40]}
    raw["lottery"]["rounds"] = 1
    _run(raw, tmp_path / "seq")
    groups: list = []
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _run({**raw, "vectorize_trials": "parallel"}, tmp_path / "parallel", monkeypatch, groups)
    finally:
        torch.set_num_threads(threads)
    assert groups and all(g["workers"] == 2 for g in groups)
    assert _compare_runs(tmp_path / "seq", tmp_path / "parallel") == 2 * 2


def test_the_aggregated_summary_is_the_same(pair) -> None:
    """The multi-trial summary (means, min/max/values per round) agrees; the recipe differs
    only by the key, which is not hashed: both runs are the same run folder's recipe."""
    _, seq, vec, _ = pair
    assert_same_data(seq["rounds"], vec["rounds"], "rounds", abs_tol=ATOL)
    assert_same_data(seq["controls"], vec["controls"], "controls", abs_tol=ATOL)
    assert seq["trials"] == vec["trials"] == ["trial_0", "trial_1", "trial_2"]
    assert seq["recipe_hash"] == vec["recipe_hash"]
    assert {k: v for k, v in vec["recipe"].items() if k != "vectorize_trials"} == \
        {k: v for k, v in seq["recipe"].items() if k != "vectorize_trials"}
    assert vec["recipe"]["vectorize_trials"] is True and seq["recipe"]["vectorize_trials"] is False


def test_every_run_trained_stacked_across_the_trials(pair) -> None:
    """Seven runs per trial (3 tickets, 4 controls), each one stacked fit of all 3 trials;
    each trial's folder holds its own seed."""
    root, _, _, groups = pair
    assert len(groups) == 7
    assert all(g["trials"] == [0, 1, 2] and not g["batched"] for g in groups)
    assert all(g["steps_per_call"] == {20} for g in groups)  # 20 steps per Lightning call, as sequential rounds
    assert [sorted(g["runs"]) for g in groups][:3] == [["round_0/ticket"], ["round_1/ticket"], ["round_1/random_reinit"]]
    seeds = [json.loads((root / "vec" / f"trial_{i}" / "round_0" / "ticket.json").read_text())["seed"] for i in range(3)]
    assert seeds == [0, 1, 2]


def test_dropout_model_equals_sequential(tmp_path, monkeypatch) -> None:
    """Dropout draws from the global RNG: each replicate replays its own trial's stream."""
    raw = _raw(trials=2)
    raw["model"] = {"name": "mlp", "hidden": [64, 32], "dropout": 0.3}
    raw["lottery"]["rounds"] = 1
    _run(raw, tmp_path / "seq")
    groups: list = []
    _run({**raw, "vectorize_trials": True}, tmp_path / "vec", monkeypatch, groups)
    assert groups and not any(g["batched"] for g in groups)
    assert _compare_runs(tmp_path / "seq", tmp_path / "vec") == 2 * 2


def test_a_rerun_reuses_the_sequential_runs_tickets(pair, tmp_path) -> None:
    """The key is not hashed: a stacked rerun into a sequential run's folder resumes it."""
    import shutil

    root, seq, _, _ = pair
    out = tmp_path / "copy"
    shutil.copytree(root / "seq", out)
    for i in range(3):
        shutil.rmtree(out / f"trial_{i}" / "round_2")  # an interrupted run: round 2 unfinished
    said: list[str] = []
    raw = {**_raw(trials=3, controls=list(CONTROLS)), "vectorize_trials": True}
    again = run_experiment(validate(raw, name="tiny"), out, say=said.append)
    assert sum("reusing finished ticket" in s for s in said) == 3 * (2 + 2)
    assert_same_data(seq["rounds"], again["rounds"], "rounds", abs_tol=ATOL)


def _digits_mlps(k: int, hidden: list[int]):
    """K MLPs on the digits with their own θ0 and their own random 50% masks."""
    from lth_core import Mask, apply_mask, prunable_parameters
    from lth_datasets import digits
    from lth_models import mlp

    bundle = digits()
    models, masks = [], []
    for i in range(k):
        torch.manual_seed(i)
        model = mlp(bundle.input_shape, bundle.num_classes, hidden=hidden)
        g = torch.Generator().manual_seed(100 + i)
        mask = Mask({n: torch.rand(p.shape, generator=g) < 0.5 for n, p in prunable_parameters(model).items()})
        apply_mask(model, mask)
        models.append(model)
        masks.append(mask)
    return bundle, models, masks


def test_batched_layers_hold_each_replicate_in_its_own_layout() -> None:
    """The batched holder keeps weights transposed, ``(K, in, out)``: each replicate's
    parameters come back exactly (a square 16x16 layer included, where a wrong transpose
    would keep the shape), its mask lies over its own weights, and its logits on real
    digits are its own model's within rounding."""
    bundle, models, masks = _digits_mlps(3, [24, 16, 16])
    module = stacking.StackedModule(models, masks, {"name": "adam", "lr": 1e-3, "weight_decay": 0.0}, 10,
                                    input_shape=bundle.input_shape)
    assert module.batched
    for i, model in enumerate(models):
        own = dict(model.named_parameters())
        state = module.replica_state(i)
        assert set(state) == set(own)
        for name, value in state.items():
            assert value.shape == own[name].shape and torch.equal(value, own[name].detach()), name
    for name, held in module.mask.items():  # a held mask is zero exactly where its held weight is
        weight = module.model.get_parameter(name)
        assert held.shape == weight.shape
        assert not bool((weight.detach()[~held] != 0).any()), name
    x = bundle.test_x[:50]
    logits = module(torch.stack([x] * 3))
    for i, model in enumerate(models):
        assert torch.allclose(logits[i], model(x), rtol=1e-5, atol=1e-5)


def test_stacked_chunks_are_each_trials_own_chunks() -> None:
    """Training chunks gathered into the stacked batch are exactly each loader's own chunks,
    across an epoch boundary, from trials with their own tensors and orders."""
    from lth_core.data.loaders import StepChunks, TensorLoader
    from lth_datasets import digits

    bundle = digits()
    sources = [(bundle.train_x[i * 7:], bundle.train_y[i * 7:]) for i in range(3)]  # own tensors, own sizes

    def chunks():
        # 44 steps of 32 per epoch: steps 40..100 in chunks of 25 cross epochs 0 -> 1 -> 2
        return [StepChunks(TensorLoader(x, y, 32, shuffle=True, seed=10 + i, drop_last=True), 40, 100, 25)
                for i, (x, y) in enumerate(sources)]
    stacked = list(stacking.StackedLoader(chunks()))
    each = [list(ld) for ld in chunks()]
    assert [tuple(x.shape) for x, _ in stacked] == [(3, 800, 1, 8, 8), (3, 800, 1, 8, 8), (3, 320, 1, 8, 8)]
    for j, (x, y) in enumerate(stacked):
        assert torch.equal(x, torch.stack([e[j][0] for e in each]))
        assert torch.equal(y, torch.stack([e[j][1] for e in each]))
    deferred = stacking.StackedLoader(chunks(), deferred=True)  # what training gets: rows, gathered step by step
    for first, (rows, y), (x, y_full) in zip((40, 65, 90), deferred, stacked):
        assert rows.dtype == torch.long and rows.shape == x.shape[:2] and torch.equal(y, y_full)
        steps = [deferred.gather(r, first + s) for s, r in enumerate(rows.split(32, dim=1))]
        assert torch.equal(torch.cat(steps, dim=1), x)


# --- what is refused --------------------------------------------------------------------


def test_key_is_checked(tmp_path) -> None:
    with pytest.raises(LthError, match=r"vectorize_trials is 'yes'; valid: true, false, batched, parallel"):
        validate(_raw(trials=2, vectorize_trials="yes"))
    with pytest.raises(LthError, match=r"vectorize_trials must be a true/false or string, got int 1"):
        validate(_raw(trials=2, vectorize_trials=1))
    with pytest.raises(LthError, match=r"vectorize_trials stacks the trials.*trials is 1; set trials: 2 or more"):
        validate(_raw(vectorize_trials=True))
    assert validate(_raw(trials=2, vectorize_trials=True)).hash() == validate(_raw(trials=2)).hash()


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(callbacks=[{"name": "gradual_pruning", "target": 0.5}]),
     r"vectorize_trials: recipe callbacks \(gradual_pruning\) work on one unstacked model"),
    (lambda r: r.update(tracking={"backend": "wandb", "mode": "offline"}), r"vectorize_trials: W&B keeps one active run"),
    (lambda r: r.update(model={"name": "conv2", "batchnorm": "affine"}), r"vectorize_trials: the model has buffers \(bn1.running_mean"),
    (lambda r: r["lottery"].update(rewind="late", rewind_options={"to": "10it"}),
     r"vectorize_trials: callback SaveRewindPoint \(from lth_late_rewind\) works on one unstacked model"),
    (lambda r: r["trainer"].update(gradient_clip_val=1.0), r"vectorize_trials: trainer.gradient_clip_val clips by a norm"),
    (lambda r: r["trainer"].update(strategy="ddp", devices=2, accelerator="cpu"),
     r"vectorize_trials: stacked trials train in one process on one device"),
    (lambda r: r.update(vectorize_trials="parallel", trainer={**r["trainer"], "precision": "bf16-mixed"}),
     r"vectorize_trials: parallel trains in 32-bit precision only .* trainer.precision is 'bf16-mixed'"),
    (lambda r: r.update(vectorize_trials="batched", model={"name": "mlp", "hidden": [16], "dropout": 0.2}),
     r"vectorize_trials: batched runs MLPs only .* not model 'mlp'; use vectorize_trials: true"),
])
def test_unsupported_runs_are_refused_before_training(tmp_path, monkeypatch, change, message) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    raw = _raw(trials=2, vectorize_trials=True)
    change(raw)
    with pytest.raises(LthError, match=message):
        run_experiment(validate(raw, name="tiny"), tmp_path / "run", say=lambda _: None)
    assert not list((tmp_path / "run").rglob("ticket.json"))


def test_a_diverging_trial_stops_all_with_its_own_report(tmp_path) -> None:
    """The lottery's own divergence report (message, failure.json) for the trial that diverged."""
    raw = _raw(trials=2, vectorize_trials=True)
    raw["optimizer"] = {"name": "sgd", "lr": 1.0e8}
    raw["lottery"]["rounds"] = 0
    with pytest.raises(NonFiniteLoss, match=r"round 0 \[ticket\] diverged: the .* loss is nan"):
        run_experiment(validate(raw, name="tiny"), tmp_path / "run", say=lambda _: None)
    assert (tmp_path / "run" / "trial_0" / "round_0" / "failure.json").is_file()
    assert not list((tmp_path / "run").rglob("ticket.json"))


# ------------------------------------------------------------- killed mid-round, resumed


class Killed(Exception):
    """Stands in for a kill: raised right after a checkpoint file was written."""


def _kill_after(monkeypatch, folder: str, step: int) -> list[tuple[str, int]]:
    """Checkpoints are written as usual; right after ``folder``'s at ``step`` the run
    dies, leaving the files as a kill there leaves them. Returns what was written."""
    real, written = checkpoints.write, []

    def write(where, at, state):
        path = real(where, at, state)
        written.append((f"{where.parent.name}/{where.name}", at))
        if written[-1] == (folder, step):
            raise Killed(f"killed after {folder}'s checkpoint at step {step}")
        return path

    monkeypatch.setattr(checkpoints, "write", write)
    return written


def _resumable(**top) -> dict:
    """Two trials, rounds 0 and 1, a checkpoint every 20 of 60 steps, a warmup the
    resumed schedule must pick up at its step."""
    raw = _raw(trials=2, checkpoint_every_n_steps=20, **top)
    raw["optimizer"] = {"name": "adam", "lr": 3e-3, "warmup_steps": 30}
    raw["lottery"]["rounds"] = 1
    return raw


@pytest.fixture(scope="module")
def sequential_twin(tmp_path_factory):
    """The folder of a recipe's sequential run (each recipe run once for the module)."""
    done: dict[str, Path] = {}

    def get(raw: dict) -> Path:
        key = json.dumps(raw, sort_keys=True)
        if key not in done:
            done[key] = tmp_path_factory.mktemp("resumable") / "seq"
            _run(raw, done[key])
        return done[key]

    return get


DROPOUT = {"name": "mlp", "hidden": [64, 32], "dropout": 0.3}


@pytest.mark.parametrize("mode, model", [(True, None), ("parallel", None), (True, DROPOUT)], ids=["true", "parallel", "dropout"])
def test_a_killed_stacked_run_resumes_at_each_trials_checkpoint(mode, model, sequential_twin, tmp_path, monkeypatch) -> None:
    """Killed in round 1 between the two trials' checkpoints at step 40: trial 0's run
    resumes at 40, trial 1's at 20 (two stacked fits), and every ticket is the sequential
    run's bit for bit (with dropout: each trial's own stream of draws picks up where it
    was). Stacked runs write the sequential format: the same folder resumed one trial
    after another gives the same tickets too."""
    changes = {"model": model} if model else {}
    seq = sequential_twin(_resumable(**changes))
    raw = _resumable(vectorize_trials=mode, **changes)
    threads = torch.get_num_threads()
    torch.set_num_threads(2 if mode == "parallel" else threads)
    try:
        written = _kill_after(monkeypatch, "trial_0/round_1", 40)
        with pytest.raises(Killed):
            _run(raw, tmp_path / "out")
        assert written == [(f"trial_{i}/round_{r}", s) for r, s in [(0, 20), (0, 40), (1, 20)] for i in (0, 1)] + [("trial_0/round_1", 40)]
        assert not (tmp_path / "out" / "trial_0" / "round_1" / "ticket.json").exists()
        shutil.copytree(tmp_path / "out", tmp_path / "one_after_another")
        monkeypatch.undo()
        said: list[str] = []
        run_experiment(validate(raw, name="tiny"), tmp_path / "out", say=said.append)
    finally:
        torch.set_num_threads(threads)
    resumed = sorted(s.split(" from ")[0] for s in said if "resumed at step" in s)
    assert resumed == ["[trial 0] round 1 [ticket]: resumed at step 40", "[trial 1] round 1 [ticket]: resumed at step 20"]
    assert _compare_runs(seq, tmp_path / "out") == 2 * 2
    assert not list((tmp_path / "out").rglob("checkpoint*")), "a finished run keeps no checkpoint"
    run_experiment(validate(_resumable(**changes), name="tiny"), tmp_path / "one_after_another", say=lambda _: None)
    assert _compare_runs(seq, tmp_path / "one_after_another") == 2 * 2


def test_a_killed_batched_run_resumes_as_the_uninterrupted_batched_run(tmp_path, monkeypatch) -> None:
    """Batched keeps each replicate's weights and Adam state as slices of stacked tensors:
    its checkpoints hold each run's own tensors, and the resumed run (killed after both
    trials' checkpoints at step 40 of round 1) ends bit for bit as the uninterrupted one."""
    raw = _resumable(vectorize_trials="batched")
    _run(raw, tmp_path / "whole")
    _kill_after(monkeypatch, "trial_1/round_1", 40)
    with pytest.raises(Killed):
        _run(raw, tmp_path / "out")
    saved = checkpoints.read(tmp_path / "out" / "trial_1" / "round_1")
    own = load_file(str(tmp_path / "whole" / "trial_1" / "round_1" / "final.safetensors"))  # nn.Linear's names, layout
    model = saved.state["model"]
    assert saved.step == 40 and {n: t.shape for n, t in model.items()} == {n: t.shape for n, t in own.items()}
    moments = saved.state["optimizers"][0]["state"]
    assert [moments[j]["exp_avg"].shape for j in range(len(model))] == [t.shape for t in model.values()]
    monkeypatch.undo()
    _run(raw, tmp_path / "out")
    assert _compare_runs(tmp_path / "whole", tmp_path / "out") == 2 * 2


def colour_digits():
    """scikit-learn's real digits (integers 0..16) as a colour data set stored as bytes: three
    channels with different statistics (x, 16 - x, x² / 16), standardised per channel, as
    CIFAR-10 is."""
    from types import SimpleNamespace

    from sklearn.datasets import load_digits

    import lth_core

    def build():
        d = load_digits()
        x = torch.tensor(d.images, dtype=torch.uint8).unsqueeze(1)
        x = torch.cat([x, 16 - x, x * x // 16], dim=1)
        y = torch.tensor(d.target)
        norm = lth_core.Normalization.of(x[:1400], 16.0, per_channel=True)
        return lth_core.DataBundle(x[:1400], y[:1400], x[1400:], y[1400:], 10, "colour_digits", norm)

    @lth_core.hookimpl
    def register_datasets(register):
        register("colour_digits", build)

    return SimpleNamespace(__name__="colour_digits_plugin", register_datasets=register_datasets)


@pytest.mark.parametrize("mode, augment", [(True, []), ("batched", []), (True, [{"name": "random_crop", "padding": 2}, "hflip"])])
def test_stacked_trials_normalise_each_channel_of_colour_data(mode, augment, tmp_path) -> None:
    """Per-channel constants broadcast over the channels of a stacked ``(K, B, C, H, W)``
    batch (each training step and evaluation), not over its batch dimension; with
    augmentation, each trial's crops and flips are its own run's, step by step."""
    import lth_core

    raw = _raw(trials=2, data={"name": "colour_digits", "batch_size": 32, "val_size": 0.1, "augment": augment},
               lottery={**TINY["lottery"], "rounds": 1})
    plugin = colour_digits()
    lth_core.run(raw, out=tmp_path / "seq", plugins=[plugin], say=lambda _: None)
    lth_core.run({**raw, "vectorize_trials": mode}, out=tmp_path / "vec", plugins=[plugin], say=lambda _: None)
    assert _compare_runs(tmp_path / "seq", tmp_path / "vec", weight_atol=None if mode is True else 1e-5) == 2 * 2
