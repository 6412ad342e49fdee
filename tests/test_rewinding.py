"""Rewind policies on real data: late rewinding, learning-rate rewinding and fine-tuning.

Tiny lotteries on scikit-learn's digits, each watched by an independent test plugin
(a real ``round_callbacks`` hook) that records, for every training run, the weights after
every optimiser step, every training batch and the learning rate each step used. The
assertions compare what the policies start round 1 from against those records.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from safetensors.torch import load_file

from conftest import TINY
from lth_core import hookimpl
from lth_core.commands import cli
from lth_core.plugin_api.contexts import RewindContext
from lth_core.errors import LthError
from lth_core.lottery.run import load_data
from lth_core.lottery.rounds import run_lottery
from lth_core import Mask
from lth_core.engines.module import lr_factor
from lth_core.plugin_api.registry import get_registry, make_plugin_manager
from lth_core.config import load_recipe, validate
from lth_late_rewind import late_rewind, rewind_step
from lth_lr_rewind import finetune_lr

LR = 3e-3


class Watch:
    """Records each training run of a lottery, keyed by (round, run name)."""

    def __init__(self) -> None:
        self.weights: dict[tuple[int, str], dict[int, dict[str, torch.Tensor]]] = {}
        self.start: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
        self.batches: dict[tuple[int, str], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.lrs: dict[tuple[int, str], list[tuple[int, float]]] = {}

    @hookimpl
    def round_callbacks(self, context):
        key, watch = (context.round, context.name), self

        def snapshot(pl_module) -> dict[str, torch.Tensor]:
            return {k: v.detach().cpu().clone() for k, v in pl_module.model.state_dict().items()}

        class Record(pl.Callback):
            def on_train_start(self, trainer, pl_module) -> None:
                watch.start[key] = snapshot(pl_module)
                watch.weights[key] = {pl_module.step: snapshot(pl_module)}
                watch.batches[key], watch.lrs[key] = [], []

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
                x, y = batch
                watch.batches[key].append((x.clone(), y.clone()))
                watch.lrs[key].append((pl_module.step, trainer.optimizers[0].param_groups[0]["lr"]))

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                watch.weights[key][pl_module.step] = snapshot(pl_module)

        return [Record()]


def recipe_dict(max_steps: int = 60, val_check_interval: int = 10, rounds: int = 1, batch_size: int = 32, **lottery) -> dict:
    raw = copy.deepcopy(TINY)
    raw["trainer"].update(max_steps=max_steps, val_check_interval=val_check_interval)
    raw["data"]["batch_size"] = batch_size
    raw["optimizer"]["lr"] = LR
    raw["lottery"].update(rounds=rounds, **lottery)
    return raw


def run(raw: dict, out: Path) -> tuple[dict, Watch]:
    """Run a lottery in-process with the watching plugin beside the installed ones."""
    pm = make_plugin_manager()
    watch = Watch()
    pm.register(watch, name="test_rewind_watch")
    summary = run_lottery(validate(raw), out, say=lambda s: None, pm=pm)
    return summary, watch


def tensors(folder: Path, which: str) -> dict[str, torch.Tensor]:
    return load_file(str(folder / f"{which}.safetensors"))


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Bit-for-bit equality of two state dicts."""
    return set(a) == set(b) and all(a[n].dtype == b[n].dtype and torch.equal(a[n], b[n]) for n in a)


def masked(state: dict[str, torch.Tensor], mask: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: torch.where(mask[n], t, torch.zeros_like(t)) if n in mask else t for n, t in state.items()}


def history_steps(folder: Path) -> list[int]:
    return [row["step"] for row in json.loads((folder / "curves.json").read_text())]


# --- late rewinding: k = 30 (mid-epoch), milestones around k, two pruning rounds --------

K = 30
MILESTONES = [20, 45]


@pytest.fixture(scope="module")
def late_run(tmp_path_factory) -> tuple[dict, Watch, Path, dict]:
    raw = recipe_dict(max_steps=60, rounds=2, rewind="late", rewind_options={"to": f"{K}it"})
    raw["optimizer"].update(warmup_steps=5, milestones=MILESTONES)
    out = tmp_path_factory.mktemp("late")
    summary, watch = run(raw, out)
    return summary, watch, out, raw


def test_late_rewind_point_is_the_dense_run_at_step_k(late_run) -> None:
    """Round 0 saves θk: exactly the weights after its k-th optimiser step, bit for bit."""
    _, watch, out, _ = late_run
    saved = load_file(str(out / "round_0" / f"rewind_{K}.safetensors"))
    theta_k = watch.weights[(0, "ticket")][K]
    assert same(saved, theta_k)
    assert not same(saved, watch.weights[(0, "ticket")][K - 1]) and not same(saved, watch.weights[(0, "ticket")][K + 1])
    assert sorted(p.name for p in (out / "round_0").glob("rewind_*")) == [f"rewind_{K}.safetensors"]


def test_late_rewinding_restores_theta_k_in_every_round(late_run) -> None:
    """Every pruned round starts from θk (masked), not θ0 and not the trained weights."""
    _, watch, out, _ = late_run
    theta_k = watch.weights[(0, "ticket")][K]
    theta_0 = tensors(out / "round_0", "init")
    for r in (1, 2):
        folder = out / f"round_{r}"
        assert same(tensors(folder, "init"), theta_k)
        assert same(watch.start[(r, "ticket")], masked(theta_k, tensors(folder, "mask")))
        assert not same(tensors(folder, "init"), theta_0)
        assert json.loads((folder / "ticket.json").read_text())["start_step"] == K


def test_late_rewinding_curves_run_from_k_to_max_steps(late_run) -> None:
    """Round 1 trains steps k+1..max_steps: its curves are in the lottery's step numbers."""
    summary, watch, out, raw = late_run
    assert history_steps(out / "round_0") == list(range(10, 61, 10))
    steps = history_steps(out / "round_1")
    assert steps == list(range(K + 10, 61, 10)) and steps[-1] == raw["trainer"]["max_steps"]
    assert summary["rounds"][1]["steps"] == 60
    assert [s for s, _ in watch.lrs[(1, "ticket")]] == list(range(K, 60))
    assert max(watch.weights[(1, "ticket")]) == 60


def test_late_rewinding_continues_the_data_order_from_step_k(late_run) -> None:
    """Round 1's batches are round 0's batches k, k+1, ...: across an epoch boundary too."""
    _, watch, _, _ = late_run
    dense, pruned = watch.batches[(0, "ticket")], watch.batches[(1, "ticket")]
    assert len(dense) == 60 and len(pruned) == 60 - K
    first_x, first_y = pruned[0]
    assert torch.equal(first_x, dense[K][0]) and torch.equal(first_y, dense[K][1])
    assert not torch.equal(first_x, dense[0][0])
    steps_per_epoch = len(load_data(validate(recipe_dict()), get_registry()).train_loader(0))
    assert K < steps_per_epoch < 60  # round 1 crosses into epoch 1
    for (px, py), (dx, dy) in zip(pruned, dense[K:]):
        assert torch.equal(px, dx) and torch.equal(py, dy)


def test_late_rewinding_resumes_the_lr_schedule_at_k(late_run) -> None:
    """The first step of round 1 uses the schedule's rate at step k (past milestone 20)."""
    _, watch, _, raw = late_run
    factor = lr_factor(raw["optimizer"])
    dense, pruned = dict(watch.lrs[(0, "ticket")]), watch.lrs[(1, "ticket")]
    first_step, first_lr = pruned[0]
    assert first_step == K and first_lr == pytest.approx(LR * factor(K)) == pytest.approx(LR * 0.1)
    assert dense[0] == pytest.approx(LR / 5)  # warmup: round 0 did start low
    for step, lr in pruned:
        assert lr == pytest.approx(dense[step]) == pytest.approx(LR * factor(step))
    assert pruned[-1][1] == pytest.approx(LR * 0.01)  # the second milestone still applies


@pytest.mark.parametrize(("to", "batch_size", "k"), [("2ep", 64, 40), ("0it", 32, 0)])
def test_late_rewinding_in_epochs_and_to_theta0(to: str, batch_size: int, k: int, tmp_path: Path) -> None:
    """``2ep`` is two epochs of steps (digits at batch 64: 20 per epoch); ``0it`` is θ0."""
    summary, watch = run(recipe_dict(max_steps=60, batch_size=batch_size, rewind="late", rewind_options={"to": to}), tmp_path)
    if to.endswith("ep"):
        data = load_data(validate(recipe_dict(batch_size=batch_size)), get_registry())
        assert len(data.train_loader(0)) * 2 == k
    saved = load_file(str(tmp_path / "round_0" / f"rewind_{k}.safetensors"))
    assert same(saved, watch.weights[(0, "ticket")][k])
    assert same(tensors(tmp_path / "round_1", "init"), saved)
    assert json.loads((tmp_path / "round_1" / "ticket.json").read_text())["start_step"] == k
    assert history_steps(tmp_path / "round_1")[-1] == 60
    if k == 0:
        assert same(saved, tensors(tmp_path / "round_0", "init"))


def test_a_late_control_beside_init_rewinding(tmp_path: Path) -> None:
    """A control may rewind late while the ticket rewinds to θ0: round 0 still saves θk."""
    raw = recipe_dict(max_steps=30, rewind="init", rewind_options={"to": "12it"})
    raw["controls"] = [{"name": "late12", "rewind": "late"}]
    summary, watch = run(raw, tmp_path)
    theta_k = watch.weights[(0, "ticket")][12]
    assert same(tensors(tmp_path / "round_1" / "control_late12", "init"), theta_k)
    assert same(tensors(tmp_path / "round_1", "init"), tensors(tmp_path / "round_0", "init"))
    assert watch.batches[(1, "late12")][0][0].equal(watch.batches[(0, "ticket")][12][0])
    assert len(summary["controls"]["late12"]) == 1


@pytest.mark.parametrize(
    "bad", ["500", "500 steps", "-5it", "2.5ep", "it", "ep5", "5 it 5", "100%", "150%", "x%", 500, 2.5, True, ["5it"], None]
)
def test_malformed_rewind_points_are_refused(bad) -> None:
    """A wrong ``to`` is an LthError naming the option and every valid form."""
    with pytest.raises(LthError) as err:
        rewind_step(bad, steps_per_epoch=50, max_steps=1000)
    text = str(err.value)
    assert "lottery.rewind_options.to" in text
    if bad not in ("100%", "150%"):
        assert "Nit" in text and "Nep" in text


def test_rewind_point_forms() -> None:
    """The three forms, converted with the run's epoch length and training length."""
    assert rewind_step("500it", 916, 5000) == 500
    assert rewind_step(" 2ep ", 916, 5000) == 1832
    assert rewind_step("10%", 916, 5000) == 500
    assert rewind_step("2.5%", 916, 5000) == 125
    assert rewind_step("10%", 916, 4) == 0  # rounded down: a shortened run rewinds to θ0


def test_rewind_point_errors_stop_the_lottery_before_training(tmp_path: Path) -> None:
    """Malformed, unknown-key or too-late rewind points fail at round 0, before any step."""
    cases = [({"to": "30 iterations"}, "valid forms"), ({"to": "60it"}, "max_steps=60"),
             ({"too": "5it"}, "rewind_options.too"), ({}, "needs lottery.rewind_options.to")]
    for i, (options, message) in enumerate(cases):
        out = tmp_path / str(i)
        with pytest.raises(LthError, match=message):
            run(recipe_dict(max_steps=60, rewind="late", rewind_options=options), out)
        assert not (out / "round_0" / "ticket.json").exists()


def test_cli_reports_a_malformed_rewind_point(tmp_path: Path, capsys) -> None:
    """``lth run`` ends with one error line and exit status 2, no traceback."""
    recipe = tmp_path / "late.yaml"
    recipe.write_text(json.dumps(recipe_dict(rewind="late", rewind_options={"to": "2 epochs"})))
    code = cli.main(["run", str(recipe), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USER_ERROR
    assert "lth: error: rewind policy 'late' (plugin 'late_rewind'): lottery.rewind_options.to is '2 epochs'" in err
    assert "Traceback" not in err


def test_missing_rewind_point_is_a_clear_error(tmp_path: Path) -> None:
    """A run folder whose round 0 did not save θk cannot be rewound late."""
    model = torch.nn.Linear(64, 10)
    ctx = RewindContext(initial=model.state_dict(), generator=torch.Generator(), seed=0, round=1,
                        new_model=lambda: model, options={"to": "20it"}, run_dir=tmp_path,
                        max_steps=60, steps_per_epoch=40)
    with pytest.raises(LthError, match="rewind_20.safetensors does not exist"):
        late_rewind(model, Mask.ones_like(model), ctx)
    assert ctx.start_step == 0


# --- learning-rate rewinding and fine-tuning ---------------------------------------------

def schedule_recipe(rewind: str, **options) -> dict:
    raw = recipe_dict(max_steps=40, rewind=rewind, rewind_options=options)
    raw["optimizer"].update(warmup_steps=10, milestones=[25])
    return raw


def _schedule_run(tmp_path_factory, rewind: str) -> tuple[dict, Watch, Path]:
    out = tmp_path_factory.mktemp(rewind)
    summary, watch = run(schedule_recipe(rewind), out)
    return summary, watch, out


@pytest.fixture(scope="module")
def lr_rewind_run(tmp_path_factory) -> tuple[dict, Watch, Path]:
    return _schedule_run(tmp_path_factory, "lr_rewind")


@pytest.fixture(scope="module")
def finetune_run(tmp_path_factory) -> tuple[dict, Watch, Path]:
    return _schedule_run(tmp_path_factory, "finetune")


@pytest.mark.parametrize("which", ["lr_rewind_run", "finetune_run"])
def test_lr_rewinding_and_finetuning_keep_the_trained_weights(which: str, request) -> None:
    """Round 1 starts from round 0's trained weights under the new mask, not from θ0."""
    _, watch, out = request.getfixturevalue(which)
    trained = tensors(out / "round_0", "final")
    assert same(trained, watch.weights[(0, "ticket")][40])
    assert same(tensors(out / "round_1", "init"), trained)
    assert same(watch.start[(1, "ticket")], masked(trained, tensors(out / "round_1", "mask")))
    assert not same(tensors(out / "round_1", "init"), tensors(out / "round_0", "init"))


def test_lr_rewinding_replays_the_schedule_from_step_0(lr_rewind_run) -> None:
    """Warmup and milestone happen again: round 1's rates equal round 0's, step by step."""
    _, watch, out = lr_rewind_run
    dense, pruned = watch.lrs[(0, "ticket")], watch.lrs[(1, "ticket")]
    assert [s for s, _ in pruned] == list(range(40))
    assert [s for s, _ in dense] == list(range(40))
    assert [lr for _, lr in pruned] == pytest.approx([lr for _, lr in dense])
    assert pruned[0][1] == pytest.approx(LR / 10) and pruned[-1][1] == pytest.approx(LR * 0.1)
    assert history_steps(out / "round_1") == [10, 20, 30, 40]
    assert json.loads((out / "round_1" / "ticket.json").read_text())["start_step"] == 0




def test_finetuning_trains_at_one_small_fixed_rate(finetune_run) -> None:
    """Every step of round 1 uses the schedule's final rate (lr x gamma), no warmup, no decay."""
    summary, watch, out = finetune_run
    fixed = LR * 0.1
    pruned = watch.lrs[(1, "ticket")]
    assert [s for s, _ in pruned] == list(range(40))
    assert all(lr == pytest.approx(fixed) for _, lr in pruned)
    assert watch.lrs[(0, "ticket")][0][1] == pytest.approx(LR / 10) and watch.lrs[(0, "ticket")][20][1] == pytest.approx(LR)
    meta = json.loads((out / "round_1" / "ticket.json").read_text())
    assert meta["optimizer"]["lr"] == pytest.approx(fixed)
    assert meta["optimizer"]["warmup_steps"] == 0 and meta["optimizer"]["milestones"] == []
    assert summary["rounds"][1]["steps"] == 40 and history_steps(out / "round_1")[-1] == 40
    # Round 0 keeps the recipe's schedule; only the rounds after pruning fine-tune.
    assert json.loads((out / "round_0" / "ticket.json").read_text())["optimizer"]["warmup_steps"] == 10


def test_finetune_rate_option(tmp_path: Path) -> None:
    """``rewind_options.lr`` sets the rate (1e-4 as YAML reads it: a string); the constant-
    schedule default is lr / 10; nonsense is refused."""
    summary, watch = run(recipe_dict(max_steps=20, rewind="finetune", rewind_options={"lr": "1e-4"}), tmp_path)
    assert all(lr == pytest.approx(1e-4) for _, lr in watch.lrs[(1, "ticket")])
    assert all(lr == pytest.approx(LR) for _, lr in watch.lrs[(0, "ticket")])
    assert finetune_lr({"lr": 1.2e-3, "milestones": []}) == pytest.approx(1.2e-4)
    assert finetune_lr({"lr": 0.1, "milestones": [100, 200], "gamma": 0.1}) == pytest.approx(1e-3)
    for bad in (0, -1e-3, "fast", True, float("inf")):
        with pytest.raises(LthError, match="rewind_options.lr"):
            finetune_lr({"lr": 1e-3}, bad)


# --- discoverable and selectable by name ---------------------------------------------------

def test_policies_are_listed_by_lth_plugins(capsys) -> None:
    """``lth plugins --json`` lists the three policies and the θk-saving hook."""
    assert cli.main(["plugins", "--json"]) == 0
    plugins = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert plugins["late_rewind"]["registers"] == {"rewind_policies": ["late"]}
    assert plugins["late_rewind"]["hooks"] == ["register_rewind_policies"]  # it declares what round 0 saves when it registers
    assert plugins["lr_rewind"]["registers"] == {"rewind_policies": ["finetune", "lr_rewind"]}


@pytest.mark.parametrize(("name", "policy"), [("late_rewind_fashion_mnist", "late"), ("lr_rewind_fashion_mnist", "lr_rewind"), ("finetune_fashion_mnist", "finetune")])
def test_bundled_recipes_select_the_policies(name: str, policy: str) -> None:
    """Each bundled recipe names its policy and keeps the paper's LeNet settings."""
    recipe = load_recipe(name)
    assert recipe["lottery"]["rewind"] == policy and recipe["trials"] == 1
    assert recipe["optimizer"]["lr"] == 1.2e-3 and recipe["data"]["batch_size"] == 60
    assert recipe["lottery"]["layer_rates"] == {"last": 0.1} and recipe["model"]["name"] == "lenet300"
    if policy == "late":
        assert rewind_step(recipe["lottery"]["rewind_options"]["to"], 916, recipe["trainer"]["max_steps"]) == 500
