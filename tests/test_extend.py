"""``lth extend`` (lth_frankenmodel): a ticket learns new classes with its freed weights.

A real ticket for digits classes 0-4 (scikit-learn's handwritten digits, a tiny MLP, two
IMP rounds to 25%) is extended by classes 5-7 through the CLI (AdamW with strong weight
decay, rehearsal, half of the new weights given back), then by classes 8-9. The claims
that make PackNet PackNet are checked on the tensors themselves: frozen weights unchanged
bit for bit, the old tasks' logits identical bit for bit, ownership consistent.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import with_changes
from lth_core import hookimpl
from lth_core.commands import cli
from lth_core.errors import LthError
from lth_core.lottery.run import load_data
from lth_core.lottery.rounds import run_lottery
from lth_core.plugin_api.registry import core_plugin_manager, get_registry
from lth_core.config import load_recipe, validate
from lth_core.tickets.ticket import load_ticket
from lth_frankenmodel.extend import extend, make_model, training_data
from lth_frankenmodel.packed import OWNERSHIP_FILE, from_extension

A, B, C = [0, 1, 2, 3, 4], [5, 6, 7], [8, 9]


def extension_recipe(raw: dict, classes: list[int], **extend_cfg) -> dict:
    """The tiny recipe as an extension recipe: AdamW with weight decay, which moves every
    weight at every step unless the freezing callback restores it."""
    raw = {k: v for k, v in raw.items() if k not in ("lottery", "controls")}
    raw["optimizer"] = {"name": "adamw", "lr": 3e-3, "weight_decay": 0.5}
    raw["extend"] = {"classes": classes, **extend_cfg}
    return raw


@pytest.fixture(scope="module")
def chain(tmp_path_factory, make_tiny):
    """Ticket A (classes 0-4), extension AB through the CLI, extension ABC from AB."""
    root = tmp_path_factory.mktemp("extend")
    raw = make_tiny()
    raw["data"]["classes"] = A
    run_lottery(validate(raw), root / "a", say=lambda s: None)
    recipe_b = root / "b.yaml"
    recipe_b.write_text(yaml.safe_dump(extension_recipe(make_tiny(), B, rehearsal=5, prune=0.5)))
    assert cli.main(["extend", str(root / "a" / "round_2"), "--recipe", str(recipe_b), "--out", str(root / "ab")]) == 0
    recipe_c = validate(extension_recipe(make_tiny(), C, rehearsal=5, baselines=False))
    extend(root / "ab", recipe_c, root / "abc", say=lambda s: None)
    return root


def read(folder: Path) -> dict:
    return json.loads((folder / "extend.json").read_text())


def test_data_classes_keeps_and_relabels_in_list_order(tiny_raw):
    registry = get_registry()
    full = load_data(validate(tiny_raw), registry)
    tiny_raw["data"]["classes"] = [7, 2, 5]
    part = load_data(validate(tiny_raw), registry)
    assert part.num_classes == 3
    assert torch.equal(part.test_x, full.test_x[(full.test_y == 7) | (full.test_y == 2) | (full.test_y == 5)])
    want = {7: 0, 2: 1, 5: 2}
    keep = torch.isin(full.test_y, torch.tensor([7, 2, 5]))
    assert part.test_y.tolist() == [want[int(c)] for c in full.test_y[keep]]
    n_train = int(torch.isin(full.bundle.train_y, torch.tensor([7, 2, 5])).sum())
    assert part.train_x.shape[0] + part.val_x.shape[0] == n_train


def test_data_classes_is_hashed_only_when_set(tiny_raw):
    plain = validate(tiny_raw).hash()
    tiny_raw["data"]["classes"] = None
    assert validate(tiny_raw).hash() == plain  # existing run folders keep their hash
    tiny_raw["data"]["classes"] = A
    assert validate(tiny_raw).hash() != plain


@pytest.mark.parametrize("classes, needle", [([0, 12], "0..9"), ([3, 3], "distinct"), ([1], "at least two"), (["a", 1], "integers")])
def test_data_classes_mistakes_are_one_line(tiny_raw, classes, needle):
    tiny_raw["data"]["classes"] = classes
    with pytest.raises(LthError, match=needle) as err:
        load_data(validate(tiny_raw), get_registry())
    assert "\n" not in str(err.value)


def test_frozen_weights_are_bitwise_unchanged(chain):
    """Every weight the ticket kept, every old bias: exactly as the ticket trained them, though
    AdamW's weight decay pulls at them every step; the freed weights did train."""
    ticket = load_ticket(chain / "a" / "round_2")
    trained = load_ticket(chain / "ab" / "runs" / "packnet").final  # before pruning
    for name, old in ticket.final.items():
        new = trained[name][: old.shape[0]] if name.startswith("net.5") else trained[name]
        if name in ticket.mask:
            kept = ticket.mask[name]
            assert torch.equal(new[kept].view(torch.int32), old[kept].view(torch.int32)), name
            assert (new[~kept] != ticket.init[name][~kept]).float().mean() > 0.5, f"{name}: the freed weights did not train"
        else:
            assert torch.equal(new.view(torch.int32), old.view(torch.int32)), name
    assert read(chain / "ab")["variants"]["packnet"]["frozen_weights_unchanged"] is True


def test_old_task_logits_are_identical_bit_for_bit(chain):
    """Task A through the extension (its own weights and units) = the original ticket."""
    ticket = load_ticket(chain / "a" / "round_2")
    registry = get_registry()
    spec = ticket.meta["model"]
    raw = extension_recipe(yaml.safe_load((chain / "b.yaml").read_text()), B)
    raw["data"]["classes"] = A
    data = load_data(validate(raw), registry)
    original = make_model(registry, spec, data.input_shape, len(A))
    original.load_state_dict(ticket.final)
    packed = from_extension(chain / "ab")
    view = make_model(registry, spec, data.input_shape, len(A))
    view.load_state_dict(packed.view(1))
    with torch.no_grad():
        before, after = original.eval()(data.test_x), view.eval()(data.test_x)
    assert torch.equal(before.view(torch.int32), after.view(torch.int32))
    record = read(chain / "ab")
    acc = float((before.argmax(1) == data.test_y).double().mean())
    assert record["before"]["task_acc"]["1"] == record["variants"]["packnet"]["task_acc"]["1"] == pytest.approx(acc, abs=1e-12)
    assert acc == pytest.approx(ticket.meta["metrics"]["test_acc_final"], abs=1e-6)
    assert record["variants"]["packnet"]["old_task_logits_identical"] == {"1": True}


def test_ownership_is_consistent(chain):
    ticket = load_ticket(chain / "a" / "round_2")
    ab, abc = from_extension(chain / "ab"), from_extension(chain / "abc")
    mask_ab = load_ticket(chain / "ab").mask
    for name, owner in ab.owner.items():
        old = ticket.mask[name]
        rows = old.shape[0]
        assert set(owner.unique().tolist()) <= {0, 1, 2}
        assert torch.equal(owner[:rows] == 1, old) and not (owner[rows:] == 1).any()  # task 1 = exactly the ticket
        assert not ((owner[:rows] == 2) & old).any()  # task 2 only in freed positions
        assert (ab.state[name][owner == 0] == 0).all()  # free weights are zero
        assert torch.equal(mask_ab[name], owner > 0)
        mine = int((owner == 2).sum())
        freed = owner.numel() - int(old.sum())
        assert mine == freed - round(0.5 * freed)  # extend.prune: 0.5 gave half back, per layer
        later = abc.owner[name]
        assert torch.equal(later[: owner.shape[0]][owner > 0], owner[owner > 0])  # owners never change
        assert set(later[: owner.shape[0]][owner == 0].unique().tolist()) <= {0, 3}
    counts = read(chain / "ab")["parameters"]["after"]
    assert counts["free"] + counts["task_1"] + counts["task_2"] == counts["total"]
    assert load_file(str(chain / "ab" / OWNERSHIP_FILE))["net.1.weight"].dtype == torch.int16


def test_second_extension_keeps_both_older_tasks(chain):
    record = read(chain / "abc")
    assert [t["classes"] for t in record["tasks"]] == [A, B, C] and record["source_kind"] == "extension"
    packnet = record["variants"]["packnet"]
    assert packnet["old_task_logits_identical"] == {"1": True, "2": True}
    assert packnet["task_acc"]["1"] == record["before"]["task_acc"]["1"]
    assert packnet["task_acc"]["2"] == record["before"]["task_acc"]["2"]
    assert packnet["task_acc"]["3"] > 0.8  # two classes: chance is 0.5
    assert set(record["variants"]) == {"packnet", "packnet_no_rehearsal"}  # baselines: false


def test_batch_norm_statistics_and_parameters_stay_frozen(tmp_path, make_tiny):
    """Conv-2 with batch norm: the old task's running statistics and affine parameters are
    shared by every task, so training the new one must not move them."""
    raw = make_tiny()
    raw["model"] = {"name": "conv2", "batchnorm": "affine"}
    raw["data"]["classes"] = A
    raw["lottery"]["rounds"] = 1
    raw["trainer"].update(max_steps=20, val_check_interval=10)
    run_lottery(validate(raw), tmp_path / "a", say=lambda s: None)
    ext = extension_recipe(make_tiny(), B, baselines=False)
    ext["model"], ext["trainer"] = raw["model"], raw["trainer"]
    record = extend(tmp_path / "a" / "round_1", validate(ext), tmp_path / "ab", say=lambda s: None)
    assert record["variants"]["packnet"]["old_task_logits_identical"] == {"1": True}
    ticket, trained = load_ticket(tmp_path / "a" / "round_1"), load_ticket(tmp_path / "ab" / "runs" / "packnet").final
    norms = [n for n in ticket.final if "running_" in n]
    assert norms and all(torch.equal(trained[n], ticket.final[n]) for n in norms)


def test_extension_measures_forgetting_and_rehearsal(chain):
    v = read(chain / "ab")["variants"]
    assert set(v) == {"packnet", "packnet_no_rehearsal", "finetune", "dense_joint"}
    assert v["finetune"]["task_acc"]["1"] < v["packnet"]["task_acc"]["1"] - 0.2  # fine-tuning forgets A
    assert v["packnet"]["joint_acc_by_task"]["1"] > v["packnet_no_rehearsal"]["joint_acc_by_task"]["1"]  # rehearsal helps A in one head
    assert v["dense_joint"]["joint_acc"] > 0.8
    assert v["packnet"]["task_acc"]["2"] > 0.8 and 0 < v["packnet"]["new_task_acc_unpruned"] <= 1


def test_rehearsal_adds_that_many_examples_per_old_class(tiny_raw):
    tiny_raw["data"]["classes"] = A + B
    data = load_data(validate(tiny_raw), get_registry())
    tasks = [{"units": [0, 5]}, {"units": [5, 8]}]
    plain, mixed = training_data(data, tasks, 0, 0), training_data(data, tasks, 7, 0)
    assert (plain.train_y >= 5).all()
    assert torch.bincount(mixed.train_y, minlength=8)[:5].tolist() == [7] * 5
    assert mixed.train_x.shape[0] == plain.train_x.shape[0] + 35


def test_report_shows_the_extension(chain, tmp_path):
    assert cli.main(["report", str(chain / "ab"), "--out", str(tmp_path / "rep")]) == 0
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "task 1 (classes 0-4) acc (%)" in text and "| dense_joint |" in text and "bitwise unchanged" in text
    assert (tmp_path / "rep" / "extend_ab.png").stat().st_size > 1000


def _errors(chain: Path, tmp_path: Path) -> dict:
    base = yaml.safe_load((chain / "b.yaml").read_text())

    def recipe(**changes) -> str:
        raw = with_changes(base, **changes)
        path = tmp_path / f"r{len(list(tmp_path.glob('r*.yaml')))}.yaml"
        path.write_text(yaml.safe_dump(raw))
        return str(path)

    ticket = str(chain / "a" / "round_2")
    return {
        "missing ticket": ([str(tmp_path / "nope"), "--recipe", recipe()], "does not exist"),
        "not a ticket": ([str(chain / "a"), "--recipe", recipe()], "neither a ticket folder"),
        "overlapping classes": ([ticket, "--recipe", recipe(extend__classes=[4, 5])], "[4] are already taught"),
        "class out of range": ([ticket, "--recipe", recipe(extend__classes=[5, 12])], "extend.classes names [12]; data set 'digits' has classes 0..9"),
        "unknown extend key": ([ticket, "--recipe", recipe(extend__rehersal=3)], "unknown key extend.rehersal (did you mean 'rehearsal'?); valid: baselines, classes, prune, rehearsal"),
        "bad prune": ([ticket, "--recipe", recipe(extend__prune=1.5)], "extend.prune must be in [0, 1)"),
        "no extend section": ([ticket, "--recipe", recipe(extend={})], "has no extend: section"),
        "another model": ([ticket, "--recipe", recipe(model={"name": "mlp", "hidden": [32]})], "differs from the ticket's"),
        "classes set": ([ticket, "--recipe", recipe(data__classes=[5, 6])], "data.classes is set by lth extend"),
        "finished folder": ([ticket, "--recipe", recipe()], "already holds a finished extension"),
    }


@pytest.mark.parametrize("case", ["missing ticket", "not a ticket", "overlapping classes", "class out of range", "unknown extend key", "bad prune",
                                  "no extend section", "another model", "classes set", "finished folder"])
def test_bad_input_is_one_line_and_harms_nothing(chain, tmp_path, capsys, case):
    args, needle = _errors(chain, tmp_path)[case]
    out = chain / "ab" if case == "finished folder" else tmp_path / "out"
    before = (chain / "ab" / "extend.json").read_bytes()
    assert cli.main(["extend", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lth: error: ") and err.count("\n") == 1 and needle in err, err
    assert (chain / "ab" / "extend.json").read_bytes() == before
    assert case == "finished folder" or not (tmp_path / "out" / "extend.json").exists()


class _ShadowsRun:
    @hookimpl
    def register_commands(self, register):
        register("run", lambda args: 0)


def test_a_plugin_command_may_not_shadow_a_builtin(pm, capsys):
    pm.register(_ShadowsRun(), name="shadow")
    assert cli.main(["shadowed-nothing"]) == 2
    assert "registers the command 'run', which is built into lth" in capsys.readouterr().err


def test_extend_is_a_registered_command():
    assert get_registry().get("commands", "extend").plugin == "frankenmodel"


def test_the_extension_report_is_the_plugins_section():
    """lth itself knows nothing of extend.json: the plugin registers the report section."""
    assert get_registry().get("report_sections", "extension").plugin == "frankenmodel"
    assert "extension" not in get_registry(core_plugin_manager()).kinds["report_sections"]


def test_bundled_frankenmodel_recipes_run_shortened_on_fashion_mnist(tmp_path):
    short = ["trainer.max_steps=6", "trainer.val_check_interval=3", "trainer.enable_progress_bar=false",
             "trainer.limit_val_batches=1", "tracking=none", "data.batch_size=16", "data.eval_batch_size=500",
             "data.subset=300", "data.val_size=200"]
    run_lottery(load_recipe("lenet300_fashion_mnist_classes04", [*short, "lottery.rounds=1"]), tmp_path / "a", say=lambda s: None)
    record = extend(tmp_path / "a" / "round_1", load_recipe("frankenmodel_fashion_mnist", short), tmp_path / "ab", say=lambda s: None)
    assert [t["classes"] for t in record["tasks"]] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert record["variants"]["packnet"]["old_task_logits_identical"] == {"1": True}
    assert set(record["variants"]) == {"packnet", "packnet_no_rehearsal", "finetune", "dense_joint"}


def test_lth_run_refuses_an_extension_recipe(capsys):
    assert cli.main(["run", "frankenmodel_fashion_mnist", "--out", "never-made"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "use `lth extend TICKET" in err
    assert not Path("never-made").exists()
