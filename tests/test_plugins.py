"""The plugin system, end to end: hooks change real lotteries on real data.

Throwaway plugins registered in-process prove that what a plugin registers (criteria,
rewind policies, controls, callbacks, event hooks) is what a real run on scikit-learn's
digits uses, and that a misbehaving plugin is named in a one-line ``PluginError``. A real
third-party distribution (``tests/third_party_plugin``, installed with pip into a temporary
folder) proves the entry-point route through the ``lth`` command, including
``LTH_DISABLE_PLUGIN_AUTOLOAD`` and a plugin whose import fails.
"""

from __future__ import annotations

import importlib.metadata

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Iterator

import pluggy
import pytest
import pytorch_lightning as pl
import torch
import yaml
from safetensors.torch import load_file
from torch import Tensor, nn

from lth_core import __version__, hookimpl
from lth_core.commands import cli
from lth_core.plugin_api import registry as plugins
from lth_core.errors import LthError, PluginError
from lth_core.lottery.rounds import run_lottery
from lth_core.plugin_api.registry import AUTOLOAD_ENV, CORE_PLUGINS, describe_plugins, get_registry, make_plugin_manager
from lth_core.config import validate

HERE = Path(__file__).resolve().parent
EXAMPLE_SRC = HERE / "third_party_plugin"
# What the lth distribution itself registers in the `lth` entry-point group (pyproject.toml).
BUNDLED_PLUGINS = {ep.name for ep in importlib.metadata.entry_points(group="lth") if ep.dist.metadata["Name"] == "lth"}
assert {"magnitude", "random", "rewind", "models", "datasets"} <= BUNDLED_PLUGINS
# Every plugin manager holds lth's own command modules (core plugins) beside them.
LTH_PLUGINS = BUNDLED_PLUGINS | set(CORE_PLUGINS)


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def add_plugin(pm: pluggy.PluginManager) -> Iterator[Callable[[Any, str], Any]]:
    """Register throwaway plugin objects on the test's plugin manager; unregister after."""
    added: list[Any] = []

    def add(obj: Any, name: str) -> Any:
        pm.register(obj, name=name)
        added.append(obj)
        return obj

    yield add
    for obj in added:
        if pm.is_registered(obj):
            pm.unregister(obj)


def small(raw: dict, steps: int, rounds: int) -> dict:
    """Cut the tiny recipe down further: ``steps`` steps per round, ``rounds`` rounds."""
    raw["trainer"]["max_steps"] = steps
    raw["trainer"]["val_check_interval"] = max(1, steps // 2)
    raw["lottery"]["rounds"] = rounds
    return raw


def silent(_: str) -> None:
    """A ``say`` that drops progress lines."""


def expected_keep(prev: Tensor, rate: float) -> int:
    remaining = int(prev.sum())
    return remaining - int(round(rate * remaining))


def assert_lowest_pruned(new: Tensor, prev: Tensor, scores: Tensor, rate: float) -> None:
    """``new`` keeps exactly the top share of ``prev``'s weights by ``scores`` (ties allowed)."""
    assert int(new.sum()) == expected_keep(prev, rate)
    assert not bool((new & ~prev).any()), "a pruned weight came back"
    kept, dropped = scores[new], scores[prev & ~new]
    assert float(kept.min()) >= float(dropped.max()), "a lower-scoring weight was kept over a higher one"


def lth_command() -> list[str]:
    """The venv's ``lth`` script (next to this interpreter), or ``python -m lth_core.commands.cli``."""
    script = Path(sys.executable).with_name("lth")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "lth_core.commands.cli"]


def run_lth(args: list[str], pythonpath: Path, cwd: Path, disable_autoload: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in (AUTOLOAD_ENV, "PYTHONPATH")}
    env.update(PYTHONPATH=str(pythonpath), WANDB_MODE="offline", WANDB_SILENT="true")
    if disable_autoload:
        env[AUTOLOAD_ENV] = "1"
    return subprocess.run([*lth_command(), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def pip_install_target(src: Path, target: Path, workdir: Path) -> None:
    """``pip install --no-deps --no-build-isolation --target`` from a copy (keeps src clean)."""
    copy = workdir / f"src-{src.name}"
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(target), str(copy)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=workdir, timeout=300)
    assert proc.returncode == 0, f"pip install of {src} failed:\n{proc.stdout}\n{proc.stderr}"


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The CLI's single error line; fails if there is a traceback or more than one."""
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("lth: error:")]
    assert len(errors) == 1, proc.stderr
    assert proc.stderr.rstrip("\n").splitlines()[-1] == errors[0], "the error must be the last thing printed"
    return errors[0]


@pytest.fixture(scope="module")
def example_target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The third-party distribution ``lth-example-plugin``, pip-installed into a tmp folder."""
    work = tmp_path_factory.mktemp("example-plugin")
    target = work / "site"
    pip_install_target(EXAMPLE_SRC, target, work)
    return target


# ------------------------------------------------------- criterion and rewind policy


class MovementAndSignedConstant:
    """A throwaway plugin: a movement criterion and a signed-constant rewind policy.

    Criterion ``movement``: score = |w_trained - w_0| (weights that moved least are pruned).
    Rewind ``signed_constant``: each prunable weight becomes sign(w_0) * std(w_0 of its
    layer) (Zhou et al. 2019); everything else goes back to θ0.
    """

    def __init__(self) -> None:
        self.criterion_calls: list[dict] = []
        self.rewind_calls: list[dict] = []

    def movement(self, model: nn.Module, mask, context) -> dict[str, Tensor]:
        params = dict(model.named_parameters())
        scores = {n: (params[n].detach().cpu() - context.initial[n]).abs() for n in mask}
        self.criterion_calls.append(
            {
                "round": context.round,
                "weights": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                "mask": {n: m.clone() for n, m in mask.items()},
                "scores": {n: s.clone() for n, s in scores.items()},
            }
        )
        return scores

    def signed_constant(self, model: nn.Module, mask, context) -> dict[str, Tensor]:
        state = {}
        for n, w0 in context.initial.items():
            state[n] = torch.sign(w0) * w0.std() if n in mask else w0.clone()
        self.rewind_calls.append({"round": context.round, "mask": {n: m.clone() for n, m in mask.items()}, "state": state})
        return {n: t.clone() for n, t in state.items()}

    @hookimpl
    def register_criteria(self, register: Callable) -> None:
        register("weight_delta", self.movement)

    @hookimpl
    def register_rewind_policies(self, register: Callable) -> None:
        register("signed_constant", self.signed_constant)


def test_plugin_criterion_and_rewind_policy_drive_a_real_run(tiny_raw: dict, add_plugin, tmp_path: Path) -> None:
    """A plugin's criterion decides which weights survive and its rewind policy sets what they restart from."""
    plugin = add_plugin(MovementAndSignedConstant(), "movement_plugin")
    raw = small(tiny_raw, steps=40, rounds=1)
    raw["lottery"].update(criterion="weight_delta", rewind="signed_constant")
    out = tmp_path / "run"
    summary = run_lottery(validate(raw), out, say=silent)

    # The criterion ran once, for round 1, on the weights round 0 trained to.
    assert [c["round"] for c in plugin.criterion_calls] == [1]
    call = plugin.criterion_calls[0]
    round0_init = load_file(str(out / "round_0" / "init.safetensors"))
    round0_final = load_file(str(out / "round_0" / "final.safetensors"))
    assert set(call["weights"]) == set(round0_final)
    for n, t in round0_final.items():
        assert torch.equal(call["weights"][n], t), n
    assert all(bool(m.all()) for m in call["mask"].values()), "round 1 is scored from the dense mask"

    # Its scores, not magnitudes, decided round 1's mask: the lowest movers were pruned.
    mask1 = load_file(str(out / "round_1" / "mask.safetensors"))
    assert set(mask1) == set(call["scores"]) == {"net.1.weight", "net.3.weight", "net.5.weight"}
    magnitude_agrees = []
    for n, m in mask1.items():
        assert_lowest_pruned(m, call["mask"][n], call["scores"][n], rate=0.5)
        mag = round0_final[n].abs()
        magnitude_agrees.append(float(mag[m].min()) >= float(mag[~m].max()))
    assert not all(magnitude_agrees), "the mask is what magnitude pruning gives: the plugin's scores were not used"
    assert summary["rounds"][1]["weights_remaining"] == pytest.approx(0.5, abs=1e-3)

    # The rewind policy saw that mask, and round 1 trained from exactly what it returned.
    assert [c["round"] for c in plugin.rewind_calls] == [1]
    for n, m in mask1.items():
        assert torch.equal(plugin.rewind_calls[0]["mask"][n], m), n
    returned = plugin.rewind_calls[0]["state"]
    init1 = load_file(str(out / "round_1" / "init.safetensors"))
    assert set(init1) == set(returned)
    for n, t in returned.items():
        assert torch.equal(init1[n], t), n
    w = init1["net.1.weight"]
    assert torch.equal(w.abs().unique(), round0_init["net.1.weight"].std().reshape(1)), "not signed-constant weights"
    assert not torch.equal(w, round0_init["net.1.weight"])
    final1 = load_file(str(out / "round_1" / "final.safetensors"))
    for n, m in mask1.items():
        assert bool((final1[n][~m] == 0).all()), f"{n}: pruned weights are not zero after training"


# ------------------------------------------------------ controls, callbacks, events


class StepCounter(pl.Callback):
    """Counts the training batches of the Trainer it is added to."""

    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1


class ControlAndEvents:
    """A throwaway plugin: the ``random_both`` control (random mask *and* fresh weights),
    a step-counting callback in every round's Trainer, and a log of every event hook."""

    def __init__(self) -> None:
        self.counters: dict[tuple[int, str], StepCounter] = {}
        self.starts: list[tuple[int, str]] = []
        self.ends: list[tuple[int, str, dict, Any]] = []
        self.run_ends: list[tuple[dict, Path]] = []

    @hookimpl
    def register_controls(self, register: Callable) -> None:
        register("random_both", criterion="random", rewind="reinit", description="random mask and random weights")

    @hookimpl
    def round_callbacks(self, context) -> list[pl.Callback]:
        counter = StepCounter()
        self.counters[(context.round, context.name)] = counter
        return [counter]

    @hookimpl
    def on_round_start(self, context) -> None:
        self.starts.append((context.round, context.name))

    @hookimpl
    def on_round_end(self, context, ticket, metrics) -> None:
        self.ends.append((context.round, context.name, dict(metrics), ticket))

    @hookimpl
    def on_run_end(self, summary, out_dir) -> None:
        self.run_ends.append((summary, Path(out_dir)))


def test_plugin_control_callback_and_events(tiny_raw: dict, add_plugin, tmp_path: Path) -> None:
    """A plugin's control trains beside the ticket, its callback runs in every Trainer, its events fire once each."""
    plugin = add_plugin(ControlAndEvents(), "events_plugin")
    raw = small(tiny_raw, steps=30, rounds=1)
    raw["controls"] = ["random_both"]
    out = tmp_path / "run"
    summary = run_lottery(validate(raw), out, say=silent)

    runs = [(0, "ticket"), (1, "ticket"), (1, "random_both")]
    assert plugin.starts == runs
    assert [(r, n) for r, n, _, _ in plugin.ends] == runs
    assert len(plugin.run_ends) == 1
    run_summary, run_dir = plugin.run_ends[0]
    assert run_dir == out
    assert run_summary == summary == json.loads((out / "summary.json").read_text())

    # on_round_end got each run's summary row and saved ticket.
    rows = {(0, "ticket"): summary["rounds"][0], (1, "ticket"): summary["rounds"][1], (1, "random_both"): summary["controls"]["random_both"][0]}
    folders = {(0, "ticket"): out / "round_0", (1, "ticket"): out / "round_1", (1, "random_both"): out / "round_1" / "control_random_both"}
    for r, n, metrics, ticket in plugin.ends:
        assert metrics == rows[(r, n)]
        saved = load_file(str(folders[(r, n)] / "mask.safetensors"))
        assert set(saved) == set(ticket.mask) and all(torch.equal(saved[k], ticket.mask[k]) for k in saved)

    # The callback was in each run's Trainer and saw every training step.
    assert set(plugin.counters) == set(runs)
    for key, counter in plugin.counters.items():
        assert counter.batches == rows[key]["steps"] == 30, key

    # The control is a random mask with the ticket's per-layer density, trained from fresh weights.
    ticket_mask = load_file(str(folders[(1, "ticket")] / "mask.safetensors"))
    control_mask = load_file(str(folders[(1, "random_both")] / "mask.safetensors"))
    for n in ticket_mask:
        assert int(control_mask[n].sum()) == int(ticket_mask[n].sum()), n
    assert any(not torch.equal(control_mask[n], ticket_mask[n]) for n in ticket_mask)
    theta0 = load_file(str(out / "round_0" / "init.safetensors"))
    control_init = load_file(str(folders[(1, "random_both")] / "init.safetensors"))
    assert not torch.equal(control_init["net.1.weight"], theta0["net.1.weight"])

    described = {p["name"]: p for p in describe_plugins(pm=None)}
    assert described["events_plugin"]["registers"] == {"controls": ["random_both"]}


# ------------------------------------------------------------------ name clashes


class RegistersCriterion:
    """A throwaway plugin registering one criterion (magnitude scores) under ``name``."""

    def __init__(self, name: str) -> None:
        self.name = name

    @hookimpl
    def register_criteria(self, register: Callable) -> None:
        register(self.name, lambda model, mask, context: {n: p.detach().abs() for n, p in model.named_parameters() if n in mask})


def test_two_plugins_registering_one_criterion_name_fail_naming_both(
    pm: pluggy.PluginManager, add_plugin, tiny_raw: dict, tmp_path: Path
) -> None:
    """A name clash is refused before anything runs, and the message says which two plugins to choose between."""
    add_plugin(RegistersCriterion("shared_score"), "first_plugin")
    add_plugin(RegistersCriterion("shared_score"), "second_plugin")
    with pytest.raises(PluginError) as exc:
        get_registry(pm)
    message = str(exc.value)
    assert "'shared_score'" in message and "'first_plugin'" in message and "'second_plugin'" in message

    raw = small(tiny_raw, steps=4, rounds=1)
    with pytest.raises(PluginError, match="first_plugin"):
        run_lottery(validate(raw), tmp_path / "run", say=silent)
    assert not (tmp_path / "run").exists(), "a clash must stop the run before it writes anything"


def test_plugin_clashing_with_a_bundled_name_fails_naming_both(pm: pluggy.PluginManager, add_plugin) -> None:
    """Bundled plugins get no special treatment: taking 'magnitude' is a clash with the bundled plugin."""
    add_plugin(RegistersCriterion("magnitude"), "my_magnitude")
    with pytest.raises(PluginError) as exc:
        get_registry(pm)
    assert "'magnitude' and 'my_magnitude'" in str(exc.value)


# ------------------------------------------------------ misbehaving criteria / rewinds


def _raises(model: nn.Module, mask, context) -> dict:
    raise RuntimeError("scores exploded")


def _wrong_shape(model: nn.Module, mask, context) -> dict:
    return {n: torch.rand(m.shape).T.contiguous() for n, m in mask.items()}


def _nan_on_unpruned(model: nn.Module, mask, context) -> dict:
    out = {n: torch.rand(m.shape) for n, m in mask.items()}
    out[next(iter(mask))][0, 0] = float("nan")
    return out


def _not_a_dict(model: nn.Module, mask, context) -> list:
    return [torch.rand(m.shape) for m in mask.values()]


def _missing_layer(model: nn.Module, mask, context) -> dict:
    return {n: torch.rand(m.shape) for n, m in list(mask.items())[:-1]}


def _bool_scores(model: nn.Module, mask, context) -> dict:
    """A mask handed back as scores: True/False cannot rank which weights go first."""
    return {n: torch.rand(m.shape) > 0.5 for n, m in mask.items()}


def _complex_scores(model: nn.Module, mask, context) -> dict:
    """Complex numbers have no order: topk would fail deep in torch."""
    return {n: torch.rand(m.shape, dtype=torch.complex64) for n, m in mask.items()}


class RegistersFunction:
    """A throwaway plugin registering ``fn`` as criterion (or rewind policy) ``bad``."""

    def __init__(self, fn: Callable, kind: str = "criteria") -> None:
        self.fn, self.kind = fn, kind

    @hookimpl
    def register_criteria(self, register: Callable) -> None:
        if self.kind == "criteria":
            register("bad", self.fn)

    @hookimpl
    def register_rewind_policies(self, register: Callable) -> None:
        if self.kind == "rewind_policies":
            register("bad", self.fn)


def _stops_naming(raw: dict, out: Path, source: str, expected: str) -> None:
    """The run stops after round 0 with one line naming ``source`` and saying ``expected``."""
    with pytest.raises(PluginError) as exc:
        run_lottery(validate(raw), out, say=silent)
    message = str(exc.value)
    assert source in message and expected in message and "\n" not in message
    assert (out / "round_0" / "ticket.json").is_file()


@pytest.mark.parametrize(
    "fn, expected",
    [
        (_raises, "raised RuntimeError: scores exploded"),
        (_wrong_shape, "shaped"),
        (_nan_on_unpruned, "non-finite scores for unpruned weights"),
        (_not_a_dict, "returned list, expected a dict"),
        (_missing_layer, "returned no scores for"),
        (_bool_scores, "returned torch.bool scores for net.1.weight, expected real numbers (a floating or integer tensor)"),
        (_complex_scores, "returned torch.complex64 scores for net.1.weight, expected real numbers"),
    ],
    ids=["raises", "wrong_shape", "nan_unpruned", "not_a_dict", "missing_layer", "bool", "complex"],
)
def test_bad_criterion_is_a_plugin_error_naming_the_plugin(
    fn: Callable, expected: str, add_plugin, tiny_raw: dict, tmp_path: Path
) -> None:
    """Garbage from a criterion stops the run with a message naming the criterion and its plugin, not a crash deep in torch."""
    add_plugin(RegistersFunction(fn), "sloppy_plugin")
    raw = small(tiny_raw, steps=4, rounds=1)
    raw["lottery"]["criterion"] = "bad"
    out = tmp_path / "run"
    _stops_naming(raw, out, "criterion 'bad' (plugin 'sloppy_plugin')", expected)
    assert not (out / "round_1").exists()


def test_nan_scores_on_already_pruned_weights_are_accepted(add_plugin, tiny_raw: dict, tmp_path: Path) -> None:
    """Only unpruned weights need finite scores: NaN where the mask is False is fine and those weights stay pruned."""
    seen_rounds: list[int] = []

    def magnitude_nan_on_pruned(model: nn.Module, mask, context) -> dict:
        seen_rounds.append(context.round)
        params = dict(model.named_parameters())
        return {n: torch.where(m, params[n].detach().abs(), torch.tensor(float("nan"))) for n, m in mask.items()}

    add_plugin(RegistersFunction(magnitude_nan_on_pruned), "nan_plugin")
    raw = small(tiny_raw, steps=4, rounds=2)
    raw["lottery"]["criterion"] = "bad"
    out = tmp_path / "run"
    summary = run_lottery(validate(raw), out, say=silent)
    assert seen_rounds == [1, 2]
    m1 = load_file(str(out / "round_1" / "mask.safetensors"))
    m2 = load_file(str(out / "round_2" / "mask.safetensors"))
    final1 = load_file(str(out / "round_1" / "final.safetensors"))
    for n in m1:
        assert_lowest_pruned(m2[n], m1[n], final1[n].abs(), rate=0.5)
    assert summary["rounds"][2]["weights_remaining"] == pytest.approx(0.25, abs=1e-3)


def _one_round_with_bad(tiny_raw: dict, tmp_path: Path, key: str) -> Path:
    """A one-round lottery whose ``lottery.<key>`` is the test plugin's ``bad``; its folder."""
    raw = small(tiny_raw, steps=4, rounds=1)
    raw["lottery"][key] = "bad"
    out = tmp_path / "run"
    run_lottery(validate(raw), out, say=silent)
    return out


def test_integer_scores_rank_like_any_others(add_plugin, tiny_raw: dict, tmp_path: Path) -> None:
    """Integer scores are real numbers: accepted, and the lowest are pruned as with floats."""
    def rank_by_magnitude(model: nn.Module, mask, context) -> dict:
        params = dict(model.named_parameters())
        return {n: (params[n].detach().abs() * 1e6).long() for n in mask}

    add_plugin(RegistersFunction(rank_by_magnitude), "int_plugin")
    out = _one_round_with_bad(tiny_raw, tmp_path, "criterion")
    mask1 = load_file(str(out / "round_1" / "mask.safetensors"))
    final0 = load_file(str(out / "round_0" / "final.safetensors"))
    for n, m in mask1.items():
        assert_lowest_pruned(m, torch.ones_like(m), (final0[n].abs() * 1e6).long(), rate=0.5)


def _partial_state(model: nn.Module, mask, context) -> dict:
    return {n: t.clone() for n, t in context.initial.items() if n.endswith("weight")}


def _wrong_shape_state(model: nn.Module, mask, context) -> dict:
    state = {n: t.clone() for n, t in context.initial.items()}
    state["net.1.bias"] = torch.zeros(3)
    return state


def _rewind_raises(model: nn.Module, mask, context) -> dict:
    raise ValueError("no checkpoint for this round")


def _rewind_changed(change: Callable[[Tensor], Tensor]) -> Callable:
    """A rewind policy returning θ0 with ``net.1.weight`` passed through ``change``."""
    def rewind(model: nn.Module, mask, context) -> dict:
        state = {n: t.clone() for n, t in context.initial.items()}
        state["net.1.weight"] = change(state["net.1.weight"])
        return state
    return rewind


def _one_nan(w: Tensor) -> Tensor:
    w[5, 5] = float("nan")
    return w


@pytest.mark.parametrize(
    "fn, expected",
    [
        (_partial_state, "must return the model's full state dict"),
        (_wrong_shape_state, "returned net.1.bias with the wrong shape"),
        (_rewind_raises, "raised ValueError: no checkpoint for this round"),
        (_rewind_changed(lambda w: w.to(torch.complex64)), "returned net.1.weight as torch.complex64, expected a real floating tensor (the model's torch.float32)"),
        (_rewind_changed(lambda w: w > 0), "returned net.1.weight as torch.bool, expected a real floating tensor"),
        (_rewind_changed(lambda w: w.sign().long()), "returned net.1.weight as torch.int64, expected a real floating tensor"),
        (_rewind_changed(_one_nan), "returned net.1.weight with 1 NaN or infinite values, expected finite ones"),
        (_rewind_changed(lambda w: w.T.contiguous()[:, :10]), "returned net.1.weight with the wrong shape (64, 10), expected (64, 64)"),
    ],
    ids=["partial", "wrong_shape", "raises", "complex", "bool", "int", "nan", "wrong_weight_shape"],
)
def test_bad_rewind_policy_is_a_plugin_error(fn: Callable, expected: str, add_plugin, tiny_raw: dict, tmp_path: Path) -> None:
    """A rewind policy must hand back a whole, well-shaped state dict; otherwise the run stops naming it."""
    add_plugin(RegistersFunction(fn, kind="rewind_policies"), "sloppy_rewind_plugin")
    raw = small(tiny_raw, steps=4, rounds=1)
    raw["lottery"]["rewind"] = "bad"
    out = tmp_path / "run"
    _stops_naming(raw, out, "rewind policy 'bad' (plugin 'sloppy_rewind_plugin')", expected)
    assert not (out / "round_1" / "ticket.json").exists()


def test_a_rewind_policy_returning_too_few_keys_is_told_which(add_plugin, tiny_raw: dict, tmp_path: Path) -> None:
    """The common slip, rewinding only the prunable weights: the message names the biases
    it left out (and a key the model does not have)."""
    def weights_only(model: nn.Module, mask, context) -> dict:
        return {**{n: context.initial[n].clone() for n in mask}, "net.9.weight": torch.zeros(1)}

    add_plugin(RegistersFunction(weights_only, kind="rewind_policies"), "sloppy_rewind_plugin")
    raw = small(tiny_raw, steps=4, rounds=1)
    raw["lottery"]["rewind"] = "bad"
    _stops_naming(raw, tmp_path / "run", "rewind policy 'bad' (plugin 'sloppy_rewind_plugin')",
                  "must return the model's full state dict (6 entries); its dict lacks 3: net.1.bias, net.3.bias, net.5.bias "
                  "and has 1 the model does not: net.9.weight")


def test_a_rewind_in_double_precision_is_cast_to_the_model(add_plugin, tiny_raw: dict, tmp_path: Path) -> None:
    """float64 weights are the same kind of number: round 1 starts from θ0 cast to float32, exactly."""
    add_plugin(RegistersFunction(lambda model, mask, context: {n: t.double() if t.is_floating_point() else t
                                                               for n, t in context.initial.items()},
                                 kind="rewind_policies"), "double_plugin")
    out = _one_round_with_bad(tiny_raw, tmp_path, "rewind")
    init0 = load_file(str(out / "round_0" / "init.safetensors"))
    init1 = load_file(str(out / "round_1" / "init.safetensors"))
    for n, t in init0.items():
        assert init1[n].dtype == t.dtype and torch.equal(init1[n], t), n


# ------------------------------------------------------------------- lth plugins


def test_lth_plugins_json_lists_bundled_plugins(pm: pluggy.PluginManager, add_plugin, capsys: pytest.CaptureFixture) -> None:
    """`lth plugins --json` is how users (and tools) see what is installed and which names a recipe may use."""
    add_plugin(RegistersCriterion("inline_score"), "inline_plugin")
    assert cli.main(["plugins", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert isinstance(listed, list)
    by_name = {p["name"]: p for p in listed}
    assert BUNDLED_PLUGINS <= set(by_name)
    for name in BUNDLED_PLUGINS:
        assert by_name[name]["version"] == __version__
        assert by_name[name]["distribution"] == "lth"
    assert by_name["inline_plugin"]["registers"] == {"criteria": ["inline_score"]}

    registered: dict[str, set[str]] = {}
    for p in listed:
        assert set(p) >= {"name", "version", "registers"}
        for kind, names in p["registers"].items():
            registered.setdefault(kind, set()).update(names)
    assert {"magnitude", "random", "inline_score"} <= registered["criteria"]
    assert {"init", "reinit"} <= registered["rewind_policies"]
    assert {"lenet300", "mlp"} <= registered["models"]
    assert {"digits", "fashion_mnist"} <= registered["datasets"]
    assert {"random_reinit", "random_pruning"} <= registered["controls"]
    assert by_name["rewind"]["registers"]["controls"] == ["random_reinit"]
    assert by_name["random"]["registers"]["controls"] == ["random_pruning"]

    assert cli.main(["plugins"]) == 0
    text = capsys.readouterr().out
    assert "magnitude (lth 0.1.0)" in text and "controls: random_pruning" in text and "inline_plugin" in text


def example_recipe(path: Path) -> Path:
    """A tiny recipe that needs the example plugin's model and criterion."""
    path.write_text(
        yaml.safe_dump(
            {
                "name": "example",
                "seed": 0,
                "model": {"name": "example_tiny_mlp"},
                "data": {"name": "digits", "batch_size": 32},
                "trainer": {"max_steps": 20, "val_check_interval": 10, "enable_progress_bar": False},
                "lottery": {"criterion": "layer_mean_distance", "rewind": "init", "rounds": 1, "rate": 0.5},
                "tracking": "none",
            }
        )
    )
    return path


def test_disable_autoload_keeps_bundled_plugins_only(
    example_target: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    """LTH_DISABLE_PLUGIN_AUTOLOAD=1 shuts out third-party plugins (to rule them out) without losing lth's own."""
    monkeypatch.syspath_prepend(str(example_target))
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    monkeypatch.setattr(plugins, "_PM", None)  # let the CLI load plugins as a fresh process would
    try:
        loaded = make_plugin_manager()
        assert {n for n, _ in loaded.list_name_plugin()} == LTH_PLUGINS | {"example"}
        assert "layer_mean_distance" in get_registry(loaded).names("criteria")

        monkeypatch.setenv(AUTOLOAD_ENV, "1")
        bundled_only = make_plugin_manager()
        assert {n for n, _ in bundled_only.list_name_plugin()} == LTH_PLUGINS
        registry = get_registry(bundled_only)
        assert {"magnitude", "random"} <= set(registry.names("criteria"))
        assert "layer_mean_distance" not in registry.names("criteria")
        assert "example_tiny_mlp" not in registry.names("models")

        assert cli.main(["plugins", "--json"]) == 0
        assert {p["name"] for p in json.loads(capsys.readouterr().out)} == BUNDLED_PLUGINS
        recipe = example_recipe(tmp_path / "example.yaml")
        assert cli.main(["run", str(recipe), "--out", str(tmp_path / "refused")]) == 2
        err = capsys.readouterr().err
        last = err.splitlines()[-1]
        assert last.startswith("lth: error: unknown model 'example_tiny_mlp'; installed: ")
        installed = last.split("installed: ")[1].split(", ")
        assert {"lenet300", "mlp"} <= set(installed) and "example_tiny_mlp" not in installed
        assert not (tmp_path / "refused").exists()
    finally:
        sys.modules.pop("lth_example_plugin", None)


# ------------------------------------------------------ a real third-party distribution


def layer_mean_distance_oracle(w: Tensor, keep: Tensor) -> Tensor:
    """Independent re-computation of the example criterion: |w - mean(surviving w)|."""
    w = w.to(torch.float64)
    return (w - w[keep].mean()).abs()


def test_third_party_distribution_through_the_cli(example_target: Path, tmp_path: Path) -> None:
    """A pip-installed plugin is found by its entry point, runs a lottery from a recipe, and disappears with autoload off."""
    listed = run_lth(["plugins", "--json"], example_target, tmp_path)
    assert listed.returncode == 0, listed.stderr
    by_name = {p["name"]: p for p in json.loads(listed.stdout)}
    assert by_name["example"]["distribution"] == "lth-example-plugin"
    assert by_name["example"]["version"] == "0.1.0"
    assert by_name["example"]["registers"] == {"criteria": ["layer_mean_distance"], "models": ["example_tiny_mlp"]}
    assert BUNDLED_PLUGINS <= set(by_name)

    recipe = example_recipe(tmp_path / "example.yaml")
    out = tmp_path / "run"
    ran = run_lth(["run", str(recipe), "--out", str(out)], example_target, tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip().splitlines()[-1] == str(out / "summary.json")
    summary = json.loads((out / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1]
    assert summary["recipe"]["model"]["name"] == "example_tiny_mlp"

    # The plugin's model was built (its layer names and default width) ...
    mask1 = load_file(str(out / "round_1" / "mask.safetensors"))
    assert {n: tuple(t.shape) for n, t in mask1.items()} == {"1.weight": (32, 64), "3.weight": (10, 32)}
    # ... and its criterion chose the survivors: those farthest from their layer's mean.
    final0 = load_file(str(out / "round_0" / "final.safetensors"))
    for n, m in mask1.items():
        dense = torch.ones_like(m)
        assert_lowest_pruned(m, dense, layer_mean_distance_oracle(final0[n], dense), rate=0.5)

    # Autoload off: the plugin is not loaded and the same recipe fails in one line naming
    # the installed choices (the unknown model case is checked in-process above).
    refused = run_lth(
        ["run", str(recipe), "--out", str(tmp_path / "refused"), "--set", "model.name=mlp"],
        example_target, tmp_path, disable_autoload=True,
    )
    assert refused.returncode == 2
    line = error_line(refused)
    assert line.startswith("lth: error: unknown criterion 'layer_mean_distance'; installed: ")
    installed = line.split("installed: ")[1].split(", ")
    assert {"magnitude", "random"} <= set(installed) and "layer_mean_distance" not in installed
    assert not (tmp_path / "refused").exists()


@pytest.fixture(scope="module")
def broken_target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A distribution ``lth-broken-plugin`` whose plugin module raises ImportError, pip-installed into a tmp folder."""
    work = tmp_path_factory.mktemp("broken-plugin")
    src = work / "broken"
    (src / "lth_broken_plugin").mkdir(parents=True)
    (src / "pyproject.toml").write_text(
        textwrap.dedent(
            """\
            [build-system]
            requires = ["setuptools>=68"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "lth-broken-plugin"
            version = "0.0.1"

            [project.entry-points.lth]
            broken = "lth_broken_plugin"

            [tool.setuptools]
            packages = ["lth_broken_plugin"]
            """
        )
    )
    (src / "lth_broken_plugin" / "__init__.py").write_text(
        'raise ImportError("lth_broken_plugin needs the frobnicate package")\n'
    )
    target = work / "site"
    pip_install_target(src, target, work)
    return target


def test_plugin_that_fails_to_import_is_named_in_one_line(broken_target: Path, tmp_path: Path) -> None:
    """A broken plugin must not produce a traceback from deep in importlib: one line saying
    which plugin to fix and the ways out (a command that loads plugins: lth run)."""
    proc = run_lth(["run", "quickstart", "--out", str(tmp_path / "never")], broken_target, tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    line = error_line(proc)
    assert line.startswith("lth: error: plugin 'broken' (lth_broken_plugin, from lth-broken-plugin) failed to load")
    assert "ImportError: lth_broken_plugin needs the frobnicate package" in line
    assert line.endswith("; to run without it, set LTH_DISABLE_PLUGIN_AUTOLOAD=1 (lth's bundled plugins only) or remove it: "
                         "lth uninstall lth-broken-plugin; lth --traceback ... shows where it failed"), line
    assert not (tmp_path / "never").exists()
    shown = run_lth(["--traceback", "run", "quickstart", "--out", str(tmp_path / "never")], broken_target, tmp_path)
    assert shown.returncode == 2 and "lth_broken_plugin/__init__.py\", line 1" in shown.stderr, shown.stderr[-2000:]


def test_lth_plugins_lists_a_broken_plugin_as_broken(broken_target: Path, tmp_path: Path) -> None:
    """``lth plugins`` is where one looks when a plugin breaks: it lists it as broken, with
    the ways out, beside the plugins that load, and exits 0."""
    proc = run_lth(["plugins"], broken_target, tmp_path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    line = next(li for li in proc.stdout.splitlines() if li.startswith("broken "))
    assert line.startswith("broken (lth-broken-plugin 0.0.1): BROKEN, failed to load: ImportError: lth_broken_plugin needs "
                           "the frobnicate package; to run without it, set LTH_DISABLE_PLUGIN_AUTOLOAD=1"), line
    assert "magnitude (lth " in proc.stdout
    listed = {p["name"]: p for p in json.loads(run_lth(["plugins", "--json"], broken_target, tmp_path).stdout)}
    assert listed["broken"]["broken"].startswith("failed to load: ImportError: lth_broken_plugin needs the frobnicate package")
    assert listed["broken"]["registers"] == {} and BUNDLED_PLUGINS <= set(listed)


def test_disable_autoload_skips_a_broken_plugin(broken_target: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With autoload off a broken third-party plugin is never imported, so lth itself still works."""
    monkeypatch.syspath_prepend(str(broken_target))
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    try:
        with pytest.raises(PluginError, match="plugin 'broken'"):
            make_plugin_manager()
        monkeypatch.setenv(AUTOLOAD_ENV, "1")
        assert {n for n, _ in make_plugin_manager().list_name_plugin()} == LTH_PLUGINS
    finally:
        sys.modules.pop("lth_broken_plugin", None)


# ------------------------------------------------------------------------ provenance


@pytest.fixture(scope="module")
def example_target_v2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same distribution as ``example_target`` at version 0.2.0 (its code unchanged:
    a new release is what the record compares)."""
    work = tmp_path_factory.mktemp("example-plugin-v2")
    src = work / "third_party_plugin"
    shutil.copytree(EXAMPLE_SRC, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    project = src / "pyproject.toml"
    project.write_text(project.read_text().replace('version = "0.1.0"', 'version = "0.2.0"'))
    target = work / "site"
    pip_install_target(src, target, work)
    return target


def _recorded(path: Path) -> dict:
    return {p["name"]: p for p in json.loads(path.read_text())["plugins"]}


def test_runs_record_their_plugins_and_refuse_rounds_of_another_version(example_target: Path, example_target_v2: Path,
                                                                        tmp_path: Path) -> None:
    """run.json and every ticket.json name the plugins that made them; a rerun with
    lth-example-plugin 0.2.0 over rounds 0.1.0 made is refused naming it, continues with
    --accept-plugin-changes, and a round trained again records the version that trained it."""
    recipe, out = example_recipe(tmp_path / "example.yaml"), tmp_path / "run"
    first = run_lth(["run", str(recipe), "--out", str(out)], example_target, tmp_path)
    assert first.returncode == 0, first.stderr
    want = {"example": {"name": "example", "distribution": "lth-example-plugin", "version": "0.1.0"},
            **{name: {"name": name, "distribution": "lth", "version": __version__} for name in ("datasets", "rewind")}}
    assert _recorded(out / "run.json") == want  # the recipe's model and criterion (example), data set, rewind policy
    assert _recorded(out / "round_1" / "ticket.json") == _recorded(out / "run.json")
    run_json = (out / "run.json").read_bytes()

    refused = run_lth(["run", str(recipe), "--out", str(out)], example_target_v2, tmp_path)
    assert refused.returncode == 2
    assert error_line(refused) == (
        f"lth: error: round_0 in {out}: plugin 'example' made it as 0.1.0 from lth-example-plugin, and this run uses 0.2.0 "
        "from lth-example-plugin; reusing finished rounds would mix two versions under one recipe hash: rerun with "
        "--accept-plugin-changes (lth_core.run(..., accept_plugin_changes=True)) to reuse them anyway, or choose another --out")
    assert (out / "run.json").read_bytes() == run_json, "a refused rerun rewrote the run's record"

    (out / "round_1" / "ticket.json").unlink()  # train round 1 again, with the new version
    accepted = run_lth(["run", str(recipe), "--out", str(out), "--accept-plugin-changes"], example_target_v2, tmp_path)
    assert accepted.returncode == 0, accepted.stderr
    assert f"warning: round_0 in {out}: plugin 'example' made it as 0.1.0" in accepted.stderr
    assert _recorded(out / "round_0" / "ticket.json")["example"]["version"] == "0.1.0"
    assert _recorded(out / "round_1" / "ticket.json")["example"]["version"] == "0.2.0"
    assert _recorded(out / "run.json")["example"]["version"] == "0.2.0"


class Noop(pl.Callback):
    multi_step_safe = True

    def state_dict(self) -> dict:
        return {}


class RoundOneWatcher:
    """A plugin that registers nothing a recipe names but adds a callback to round 1."""

    @hookimpl
    def round_callbacks(self, context):
        return [Noop()] if context.round == 1 else None


def test_tickets_record_the_plugins_that_added_callbacks_and_notebook_plugins(tiny_raw: dict, tmp_path: Path) -> None:
    """A plugin whose round_callbacks added a callback to round 1 is in round 1's record
    (not round 0's: it added nothing there), without a distribution when passed to
    lth_core.run; rerun without it, round 1 is refused (round 0 is not), and reused with
    accept_plugin_changes."""
    from lth_core import run as lth_run

    small(tiny_raw, 20, 1)
    summary = lth_run(tiny_raw, out=tmp_path / "run", plugins=[RoundOneWatcher()], say=silent)
    watcher = {"name": "RoundOneWatcher-0", "distribution": None, "version": None}
    assert _recorded(tmp_path / "run" / "round_1" / "ticket.json")["RoundOneWatcher-0"] == watcher
    assert "RoundOneWatcher-0" not in _recorded(tmp_path / "run" / "round_0" / "ticket.json")
    assert "RoundOneWatcher-0" not in _recorded(tmp_path / "run" / "run.json")  # the recipe names nothing of it
    assert summary.ticket(1).meta["plugins"] == json.loads((tmp_path / "run" / "round_1" / "ticket.json").read_text())["plugins"]
    with pytest.raises(LthError, match=r"^round_1 in .*: plugin 'RoundOneWatcher-0' \(no version\) made it, and it is not loaded now; "):
        lth_run(tiny_raw, out=tmp_path / "run", say=silent)
    said: list[str] = []
    again = lth_run(tiny_raw, out=tmp_path / "run", say=said.append, accept_plugin_changes=True)
    assert again["rounds"] == summary["rounds"]
    assert said[0].startswith("warning: round_1 in ") and said[0].endswith("it is not loaded now; reusing it anyway (--accept-plugin-changes)")
