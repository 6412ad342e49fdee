"""A lottery on the user's own LightningModule and LightningDataModule, written as a user
writes them: an MLP on scikit-learn's digits over standard DataLoaders, a small CNN with
its own SGD and cosine schedule, and a module that monitors ``val_acc`` (mode max)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lth_core


class Digits(pl.LightningDataModule):
    """scikit-learn's 8x8 digits: 1,437 training, 180 validation, 180 test images."""

    def __init__(self, batch_size: int = 32, image: bool = False):
        super().__init__()
        self.batch_size, self.image = batch_size, image

    def setup(self, stage: str | None = None) -> None:
        d = load_digits()
        x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
        x = x if self.image else x.flatten(1)
        y = torch.tensor(d.target)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        parts = order[:1437], order[1437:1617], order[1617:]
        self.train_set, self.val_set, self.test_set = (TensorDataset(x[p], y[p]) for p in parts)

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=256)

    def test_dataloader(self):
        return DataLoader(self.test_set, batch_size=256)


class MLP(pl.LightningModule):
    """A user's classifier: its own layers, Adam, and logs val_loss, val_acc, test_acc."""

    def __init__(self, hidden: int = 48):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def _measure(self, batch, split):
        x, y = batch
        logits = self(x)
        self.log(f"{split}_loss", F.cross_entropy(logits, y))
        self.log(f"{split}_acc", (logits.argmax(1) == y).float().mean())

    def validation_step(self, batch, batch_idx):
        self._measure(batch, "val")

    def test_step(self, batch, batch_idx):
        self._measure(batch, "test")

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


class CNN(MLP):
    """A small CNN with its own SGD (momentum, weight decay) and a cosine schedule per step."""

    def __init__(self):
        pl.LightningModule.__init__(self)
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 16, 10))
        self.lrs: list[float] = []

    def training_step(self, batch, batch_idx):
        self.lrs.append(self.optimizers().param_groups[0]["lr"])
        return super().training_step(batch, batch_idx)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=60)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


RECIPE = {
    "seed": 0,
    "trainer": {"max_steps": 60, "val_check_interval": 20, "enable_progress_bar": False},
    "lottery": {"rounds": 2, "rate": 0.5},
    "controls": ["random_reinit"],
    "tracking": "none",
}


def quiet(_text: str) -> None:
    pass


def tickets(out: Path) -> dict[str, lth_core.Ticket]:
    return {str(t.parent.relative_to(out)): lth_core.load_ticket(t.parent) for t in sorted(out.rglob("ticket.json"))}


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mlp")
    return lth_core.run(RECIPE, out=out, module=MLP, datamodule=Digits(), say=quiet), out


def test_the_lottery_runs_on_the_users_module(mlp_run):
    """Rounds, the control, the paper's measures and tickets, as for a native run: round 1
    keeps half the weights, every ticket's pruned weights are exactly zero, the ticket
    rewinds to the module's own θ0 and the control starts from another module's."""
    summary, out = mlp_run
    rows = summary["rounds"]
    assert [r["round"] for r in rows] == [0, 1, 2] and set(summary["controls"]) == {"random_reinit"}
    assert [r["weights_remaining"] for r in rows] == pytest.approx([1.0, 0.5, 0.25], abs=0.01)
    assert all(r["test_acc"] > 0.5 and r["steps"] == 60 and r["early_stop_step"] in (20, 40, 60) for r in rows)
    assert summary["recipe"]["model"] == {"name": "lightning_module", "class": "test_own_module.MLP"}
    found = tickets(out)
    assert set(found) == {"round_0", "round_1", "round_2", "round_1/control_random_reinit", "round_2/control_random_reinit"}
    for name, ticket in found.items():
        for n, keep in ticket.mask.items():
            assert torch.count_nonzero(ticket.final[n][~keep]) == 0, (name, n)
    theta0 = found["round_0"].init
    assert all(torch.equal(found["round_2"].init[k], theta0[k]) for k in theta0)
    assert not torch.equal(found["round_2/control_random_reinit"].init["net.0.weight"], theta0["net.0.weight"])
    assert found["round_2/control_random_reinit"].mask == found["round_2"].mask


def test_early_stopping_and_test_metrics_come_from_the_modules_own_steps(mlp_run):
    """The early-stopping step is the lowest val_loss the module logged; test_acc there and
    at the end are what its own test step measured with those weights."""
    summary, out = mlp_run
    for row in summary["rounds"]:
        curves = json.loads((out / f"round_{row['round']}" / "curves.json").read_text())
        best = min(curves, key=lambda r: r["val_loss"])
        assert row["early_stop_step"] == best["step"] and row["val_loss_min"] == best["val_loss"]
        assert row["test_acc"] == best["test_acc"] and row["test_acc_final"] == curves[-1]["test_acc"]
        assert [c["step"] for c in curves] == [20, 40, 60]


def test_lth_report_reads_the_run_of_a_users_module(mlp_run, tmp_path):
    """The native report: accuracy and early-stopping figures from the summary, and the
    training curves of the metric the module was monitored by (it is tested at the
    early-stopping step and at the end only)."""
    from lth_core.reporting.report import write_report

    _, out = mlp_run
    report = write_report([out], tmp_path / "report")
    assert {p.name for p in (tmp_path / "report").glob("*.png")} == {"accuracy_vs_weights.png", "early_stop_vs_weights.png", "curves.png"}
    text = report.read_text()
    assert "random_reinit" in text and "| 2 | 25.0 |" in text


def test_lth_run_resume_names_the_python_call(mlp_run, capsys):
    """The CLI cannot build the user's module: resuming its folder says how to, in one line."""
    from lth_core.commands import cli

    _, out = mlp_run
    assert cli.main(["run", "--resume", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lth: error: ") and "test_own_module.MLP" in err and "lth_core.run(recipe, out=DIR, module=" in err
    assert "\n" not in err


def test_a_rerun_reuses_every_ticket(mlp_run):
    summary, out = mlp_run
    said: list[str] = []
    again = lth_core.run(RECIPE, out=out, module=MLP, datamodule=Digits(), say=said.append)
    assert sum("reusing finished ticket" in line for line in said) == 5
    assert again["rounds"] == summary["rounds"]


def test_a_cnn_with_its_own_sgd_and_cosine_schedule(tmp_path):
    """The module's optimiser (SGD with momentum and weight decay, which would revive pruned
    weights without lth's mask) and its per-step schedule run as written."""
    built: list[CNN] = []

    def factory() -> CNN:
        built.append(CNN())
        return built[-1]

    recipe = {**RECIPE, "lottery": {"rounds": 1, "rate": 0.6}, "controls": []}
    summary = lth_core.run(recipe, out=tmp_path, module=factory, datamodule=Digits(image=True), say=quiet)
    ticket = summary.ticket(1)
    assert ticket.mask.density() == pytest.approx(0.4, abs=0.01)
    for n, keep in ticket.mask.items():
        assert torch.count_nonzero(ticket.final[n][~keep]) == 0, n
    lrs = built[0].lrs  # the module trained in every round is the first one built (θ0's)
    assert lrs[0] == pytest.approx(0.1) and lrs[59] < 0.01 and lrs[60] == pytest.approx(0.1)  # round 1 restarts it


class AccuracyMonitored(MLP):
    """Logs val_acc only (no val_loss), so the lottery must monitor it, highest best."""

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())


def test_a_module_monitored_by_val_acc_mode_max(tmp_path):
    recipe = {**RECIPE, "controls": [], "lottery": {"rounds": 1, "rate": 0.5, "monitor": "val_acc", "monitor_mode": "max"}}
    summary = lth_core.run(recipe, out=tmp_path, module=AccuracyMonitored, datamodule=Digits(), say=quiet)
    for row in summary["rounds"]:
        curves = json.loads((tmp_path / f"round_{row['round']}" / "curves.json").read_text())
        best = max(curves, key=lambda r: r["val_acc"])
        assert row["early_stop_step"] == best["step"] and row["val_acc"] == best["val_acc"] and "val_loss_min" not in row


class NoPrunable(MLP):
    def __init__(self):
        pl.LightningModule.__init__(self)
        self.scale = nn.Parameter(torch.ones(64, 10))

    def forward(self, x):
        return x @ self.scale


class NoTestLoader(Digits):
    test_dataloader = pl.LightningDataModule.test_dataloader


@pytest.mark.parametrize("module,datamodule,changes,message", [
    (MLP, Digits(), {"lottery.monitor": "val_f1"}, "lottery.monitor is 'val_f1', which test_own_module.MLP does not log (it logs val_acc, val_loss)"),
    (MLP, Digits(), {"lottery.test_metric": "test_f1"}, "lottery.test_metric is 'test_f1', which test_own_module.MLP does not log"),
    (NoPrunable, Digits(), {}, "test_own_module.NoPrunable has no prunable weights"),
    (MLP, NoTestLoader(), {}, "test_own_module.NoTestLoader has no test_dataloader"),
    (MLP, None, {}, "module= and datamodule= go together"),
    (MLP, Digits(), {"model": "lenet300"}, "recipe model: 'lenet300' names a registered model"),
])
def test_what_cannot_work_is_one_line_before_training(tmp_path, module, datamodule, changes, message):
    with pytest.raises(lth_core.LthError) as err:
        lth_core.run(RECIPE, out=tmp_path / "run", overrides=changes, module=module, datamodule=datamodule, say=quiet)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


def test_a_killed_run_of_the_users_module_resumes_at_its_checkpoint(tmp_path, monkeypatch):
    """Killed right after round 1's step-20 checkpoint, the rerun says the loaders' position
    cannot be kept, resumes at step 20 (weights, Adam state, best weights, history) and
    finishes every round with valid tickets."""
    from lth_core.engines import checkpoints

    class Killed(Exception):
        pass

    real = checkpoints.write

    def write(folder, step, state):
        path = real(folder, step, state)
        if Path(folder).name == "round_1" and step == 20:
            raise Killed()
        return path

    recipe = {**RECIPE, "checkpoint_every_n_steps": 20, "controls": []}
    monkeypatch.setattr(checkpoints, "write", write)
    with pytest.raises(Killed):
        lth_core.run(recipe, out=tmp_path, module=MLP, datamodule=Digits(), say=quiet)
    monkeypatch.setattr(checkpoints, "write", real)
    said: list[str] = []
    summary = lth_core.run(recipe, out=tmp_path, module=MLP, datamodule=Digits(), say=said.append)
    assert sum("then trains on what your loaders give next" in line for line in said) == 1
    assert any(line.startswith("round 1 [ticket]: resumed at step 20") for line in said), said
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2] and not list(tmp_path.rglob("checkpoint*"))
    curves = json.loads((tmp_path / "round_1" / "curves.json").read_text())
    assert [c["step"] for c in curves] == [20, 40, 60] and all("test_acc" in curves[i] for i in (-1,))
    for ticket in tickets(tmp_path).values():
        for n, keep in ticket.mask.items():
            assert torch.count_nonzero(ticket.final[n][~keep]) == 0


class TokenDigits(Digits):
    """The digits as 64 tokens each (pixel intensities 0..16), for a module with an embedding."""

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        for name in ("train_set", "val_set", "test_set"):
            x, y = getattr(self, name).tensors
            setattr(self, name, TensorDataset((x * 16).round().long(), y))


class Embedded(MLP):
    """An embedding of each pixel's intensity, then a linear head: the embedding is not a
    default prunable weight, so a recipe names it to prune it."""

    def __init__(self):
        pl.LightningModule.__init__(self)
        self.embed = nn.Embedding(17, 4)
        self.head = nn.Linear(64 * 4, 10)

    def forward(self, x):
        return self.head(self.embed(x).flatten(1))


def test_a_recipe_chooses_the_prunable_weights_of_a_users_module(tmp_path):
    """``lottery.prunable.include`` adds the embedding the default leaves out; ``exclude:
    [last]`` keeps the output layer dense."""
    recipe = {**RECIPE, "controls": [], "lottery": {"rounds": 1, "rate": 0.5, "prunable": {"include": ["embed"], "exclude": ["last"]}}}
    summary = lth_core.run(recipe, out=tmp_path, module=Embedded, datamodule=TokenDigits(), say=quiet)
    mask = summary.ticket(1).mask
    assert list(mask) == ["embed.weight"] and int(mask["embed.weight"].sum()) == 34  # 68 embedding weights, half kept
    final = summary.ticket(1).final
    assert torch.count_nonzero(final["embed.weight"][~mask["embed.weight"]]) == 0
    assert torch.count_nonzero(final["head.weight"]) == final["head.weight"].numel()  # the output layer is not pruned


def test_a_native_recipe_chooses_its_prunable_weights_too(tmp_path, tiny_raw):
    """The same key on lth's own models: ``exclude: [last]`` leaves the output layer out of
    every mask; a pattern that names nothing is one line listing the parameters."""
    tiny_raw["lottery"].update(rounds=1, prunable={"exclude": ["last"]})
    summary = lth_core.run(tiny_raw, out=tmp_path / "a", say=quiet)
    assert list(summary.ticket(1).mask) == ["net.1.weight", "net.3.weight"]
    tiny_raw["lottery"]["prunable"] = {"exclude": ["fc9"]}
    with pytest.raises(lth_core.LthError, match=r"lottery.prunable.exclude: 'fc9' matches no parameter; valid: net.1.weight, "):
        lth_core.run(tiny_raw, out=tmp_path / "b", say=quiet)
    assert not (tmp_path / "b").exists()
