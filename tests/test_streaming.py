"""The streaming path on real images written to disk: ``image_folder`` and torchvision's
data sets by name, fed through ``DataLoader`` workers.

Fashion-MNIST (Debian's package) or, without it, scikit-learn's digits are written as PNG
files in class folders (``tmp_path``). The same LeNet lottery through ``image_folder`` and
through the tensor path is the same lottery, number for number; a torchvision ResNet-18
runs a two-round lottery with a control on such a folder with augmentation and resumes
after a real ``kill -9`` with the uninterrupted run's results; a stream resumes at the
same batch; mistakes are one line.
"""

from __future__ import annotations

import copy
import json
import multiprocessing
from pathlib import Path

import pytest
import torch
import yaml
from torchvision.io import write_png

from lth_core import DataBundle, Normalization, hookimpl
from lth_core.config import validate
from lth_core.data.streaming import StreamingData
from lth_core.errors import LthError
from lth_core.lottery.rounds import run_lottery
from lth_core.lottery.trials import run_experiment
from lth_datasets import DEBIAN_FASHION_MNIST, IDX_FILES, digits, fashion_mnist, prepare_debian_fashion_mnist
from lth_datasets.folders import image_folder, torchvision_dataset

from test_cli import assert_user_error, lth
from test_resume import _kill_when, _lth_run, assert_same_results, stopped_and_resumed

HAS_FASHION = (DEBIAN_FASHION_MNIST / f"{IDX_FILES[0]}.gz").is_file()


def _images() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 images and labels: Fashion-MNIST's first 1,200/300, or the digits as bytes."""
    if HAS_FASHION:
        b = fashion_mnist()
        return b.train_x[:1200], b.train_y[:1200], b.test_x[:300], b.test_y[:300]
    b = digits()
    lo, hi = min(b.train_x.min(), b.test_x.min()), max(b.train_x.max(), b.test_x.max())
    as_bytes = lambda x: ((x - lo) / (hi - lo) * 255).round().to(torch.uint8)  # noqa: E731
    return as_bytes(b.train_x), b.train_y, as_bytes(b.test_x), b.test_y


def write_folder(root: Path, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PNG files ``root/class<k>/<i>.png``; returns the images in ImageFolder's order."""
    order = sorted(range(len(y)), key=lambda i: (int(y[i]), i))
    for i in order:
        folder = root / f"class{int(y[i])}"
        folder.mkdir(parents=True, exist_ok=True)
        write_png(x[i], str(folder / f"{i:05d}.png"))
    return x[order], y[order]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> dict:
    """``root/train/<class>/*.png`` and ``root/test/<class>/*.png`` of real images, and the
    same images as tensors in the order ``ImageFolder`` reads them."""
    root = tmp_path_factory.mktemp("pngs")
    xtr, ytr, xte, yte = _images()
    train = write_folder(root / "train", xtr, ytr)
    test = write_folder(root / "test", xte, yte)
    return {"root": root, "train": train, "test": test, "side": int(xtr.shape[-1])}


class SameImages:
    """A data-set plugin returning the folder's images as tensors (the tensor path)."""

    def __init__(self, folder: dict):
        self.folder = folder

    @hookimpl
    def register_datasets(self, register):
        def same_images():
            (xtr, ytr), (xte, yte) = self.folder["train"], self.folder["test"]
            return DataBundle(xtr, ytr, xte, yte, 10, "same_images", Normalization.of(xtr, 255.0))
        register("same_images", same_images)


def lenet(data: dict) -> dict:
    return {"name": "stream", "seed": 1, "model": {"name": "lenet300"}, "data": {"batch_size": 50, "val_size": 100, **data},
            "optimizer": {"name": "adam", "lr": 1.2e-3}, "lottery": {"rounds": 2, "rate": 0.5},
            "trainer": {"max_steps": 60, "val_check_interval": 20, "enable_progress_bar": False}, "tracking": "none"}


def test_the_same_lottery_through_image_folder_and_the_tensor_path(folder, tmp_path, pm):
    """Same images, same split, same order, same normalisation: the same numbers."""
    pm.register(SameImages(folder), name="same_images_plugin")
    streamed = lenet({"name": "image_folder", "root": str(folder["root"]), "image_size": folder["side"], "workers": 1})
    tensors = lenet({"name": "same_images"})
    before = set(multiprocessing.active_children())
    a = run_lottery(validate(streamed), tmp_path / "stream", say=lambda s: None, pm=pm)
    assert not set(multiprocessing.active_children()) - before  # the lottery stopped its data workers when done
    b = run_lottery(validate(tensors), tmp_path / "tensor", say=lambda s: None, pm=pm)
    assert [r["weights_remaining"] for r in a["rounds"]] == [1.0, 0.5, 0.25]
    assert json.dumps(a["rounds"]) == json.dumps(b["rounds"])
    assert a["rounds"][0]["test_acc"] > 0.5  # it learned: ten classes, chance is 0.1
    for k in range(3):
        curve = lambda d: json.loads((d / f"round_{k}" / "curves.json").read_text())  # noqa: E731
        assert curve(tmp_path / "stream") == curve(tmp_path / "tensor")


def test_workers_chunks_resumption_and_shares_serve_the_same_batches(folder):
    bundle = image_folder(str(folder["root"]), folder["side"])
    aug = [{"name": "random_crop", "padding": 2}, "hflip"]

    def data(workers=0):
        return StreamingData(bundle, 32, 100, 100, seed=0, augment=aug, workers=workers)

    def batches(ld, epoch=0, skip=0):
        ld.epoch, ld.skip_batches = epoch, skip
        return list(ld)

    plain = batches(data().train_loader(0))
    assert torch.equal(torch.cat([x for x, _ in batches(data(2).train_loader(0))]), torch.cat([x for x, _ in plain]))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches(data().train_loader(0), 0, 5), plain[5:]))
    from lth_core.engines.trainer import train_loader

    chunked = [b for xs, _ in train_loader(data(), 3, 3 + 14, 7) for b in xs.split(32)]
    assert all(torch.equal(a, b[0]) for a, b in zip(chunked, plain[3:17]))
    half = []
    for rank in (0, 1):
        ld = data().train_loader(0)
        ld.rank, ld.world = rank, 2
        half.append(batches(ld))
    assert all(torch.equal(torch.cat([a[0], b[0]]), p[0]) for a, b, p in zip(*half, plain))
    assert plain[0][0].dtype == torch.float32 and plain[0][1].dtype == torch.long
    # the validation split is the tensor path's: held out by the seed
    from lth_core.data.loaders import DataModule

    (xtr, ytr), (xte, yte) = folder["train"], folder["test"]
    tensors = DataModule(DataBundle(xtr, ytr, xte, yte, 10, "t", Normalization.of(xtr, 255.0)), 32, 100, 100, seed=0)
    assert torch.equal(data().rows["val"], tensors.rows["val"]) and torch.equal(data().val_y, tensors.val_y)


def test_a_stream_with_augmentation_resumes_at_the_same_batch(folder, tmp_path, pm):
    raw = {"name": "stream-resume", "seed": 3, "model": {"name": "mlp", "hidden": [32]},
           "data": {"name": "image_folder", "root": str(folder["root"]), "image_size": 12, "batch_size": 32, "val_size": 100,
                    "workers": 1, "augment": [{"name": "random_crop", "padding": 2}, "hflip"]},
           "trainer": {"max_steps": 80, "val_check_interval": 10, "enable_progress_bar": False},
           "lottery": {"rounds": 1, "rate": 0.5}, "checkpoint_every_n_steps": 20, "tracking": "none"}
    stopped_and_resumed(raw, tmp_path, pm, round_=1, step=50)


def test_a_torchvision_resnet18_lottery_on_a_png_folder_resumes_after_kill_9(folder, tmp_path, pm):
    """Two rounds and a random-reinit control of torchvision's ResNet-18 (CIFAR stem) on
    16x16 resized PNGs with crops and flips, killed mid round 1, rerun: the uninterrupted
    run's summary and every ticket, bit for bit."""
    raw = {"name": "resnet18-folder", "seed": 0, "model": {"name": "torchvision", "arch": "resnet18"},
           "data": {"name": "image_folder", "root": str(folder["root"]), "image_size": 16, "batch_size": 16,
                    "val_size": 64, "subset": 400, "eval_batch_size": 64, "workers": 1,
                    "augment": [{"name": "random_crop", "padding": 2}, {"name": "hflip"}]},
           "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
           "trainer": {"max_steps": 12, "val_check_interval": 4, "enable_progress_bar": False, "limit_val_batches": 1},
           "lottery": {"rounds": 1, "rate": 0.5, "scope": "global", "layer_rates": {"fc": 0.0}},
           "controls": ["random_reinit"], "checkpoint_every_n_steps": 4, "tracking": "none"}
    baseline = run_lottery(validate(copy.deepcopy(raw)), tmp_path / "baseline", say=lambda s: None, pm=pm)
    assert [r["weights_remaining"] for r in baseline["rounds"]] == [1.0, pytest.approx(0.5, abs=0.01)]
    path = tmp_path / "r18.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    _kill_when(_lth_run([str(path), "--out", str(out)]), out / "round_1" / "checkpoint.json", timeout=300)
    assert not (out / "round_1" / "ticket.json").exists()
    proc = _lth_run([str(path), "--out", str(out)])
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    assert "round 1 [ticket]: resumed at step" in err
    assert_same_results(out, tmp_path / "baseline")


@pytest.mark.skipif(not HAS_FASHION, reason="needs Debian's dataset-fashion-mnist")
def test_torchvision_data_sets_by_name_read_their_files_and_refuse_in_one_line_when_absent(tmp_path):
    prepare_debian_fashion_mnist(DEBIAN_FASHION_MNIST, tmp_path / "data")
    bundle = torchvision_dataset("FashionMNIST", root=str(tmp_path / "data"), download=False, stats_images=500)
    tensors = fashion_mnist()
    assert bundle.num_classes == 10 and len(bundle.train) == 60000 and len(bundle.test) == 10000
    assert all(torch.equal(bundle.train[i][0], tensors.train_x[i]) and bundle.train[i][1] == int(tensors.train_y[i]) for i in (0, 59999))
    resized = torchvision_dataset("FashionMNIST", root=str(tmp_path / "data"), download=False, image_size=16, stats_images=50)
    assert resized.input_shape == (1, 16, 16)
    with pytest.raises(LthError) as err:
        torchvision_dataset("CIFAR100", root=str(tmp_path / "empty"), download=False)
    assert str(err.value).startswith(f"torchvision data set CIFAR100 could not be loaded from {tmp_path / 'empty'}: no such folder")
    assert "\n" not in str(err.value)
    with pytest.raises(LthError, match="data.dataset 'CIFAR1000' is not one of torchvision's classification data sets"):
        torchvision_dataset("CIFAR1000", root=str(tmp_path))


def test_folder_mistakes_are_one_line(folder, tmp_path, pm):
    (tmp_path / "file.png").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    cases = {
        str(tmp_path / "missing"): "does not exist",
        str(tmp_path / "file.png"): "is a file, not a folder",
        str(tmp_path / "empty"): "holds no images in class folders",
    }
    for root, words in cases.items():
        with pytest.raises(LthError, match=words):
            image_folder(root, 16)
    raw = lenet({"name": "image_folder", "root": str(folder["root"]), "image_size": 8, "classes": [0, 1]})
    with pytest.raises(LthError, match="data.classes: data set 'image_folder' streams"):
        run_lottery(validate(raw), tmp_path / "c", say=lambda s: None, pm=pm)
    raw = lenet({"name": "image_folder", "root": str(folder["root"]), "image_size": 8})
    raw.update(trials=2, vectorize_trials=True)
    with pytest.raises(LthError, match="vectorize_trials: the recipe's data set streams"):
        run_experiment(validate(raw), tmp_path / "v", say=lambda s: None)
    recipe = tmp_path / "missing.yaml"
    recipe.write_text(yaml.safe_dump(lenet({"name": "image_folder", "root": str(tmp_path / "missing"), "image_size": 8})))
    assert_user_error(lth("run", str(recipe), "--out", str(tmp_path / "o")), "data.root", "does not exist", only_line=False)


def test_two_data_parallel_processes_stream_their_shares_and_match_one_process(folder, tmp_path, pm):
    """A real ``lth run`` on two CPU processes (each loading its half of every batch through
    its own worker) ends where one process does."""
    from test_distributed import DDP, _lth_run as ddp_run

    raw = lenet({"name": "image_folder", "root": str(folder["root"]), "image_size": folder["side"], "workers": 1})
    raw["lottery"]["rounds"] = 1
    raw["trainer"].update(max_steps=40)
    single = run_lottery(validate(copy.deepcopy(raw)), tmp_path / "single", say=lambda s: None, pm=pm)
    raw["trainer"].update(DDP)
    recipe = tmp_path / "ddp.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    ddp_run(recipe, tmp_path / "ddp")
    ddp = json.loads((tmp_path / "ddp" / "summary.json").read_text())["rounds"]
    assert len(ddp) == len(single["rounds"]) == 2
    for a, b in zip(ddp, single["rounds"]):
        assert a["early_stop_step"] == b["early_stop_step"] and a["steps"] == b["steps"] == 40
        for key in ("val_loss_min", "val_acc", "test_acc", "test_acc_final"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key


def test_both_data_paths_refuse_a_batch_larger_than_the_training_split_in_the_same_words(folder):
    """The same images streamed and in memory: the same split, so the same one-line refusal."""
    from lth_core import DataModule

    (xtr, ytr), (xte, yte) = folder["train"], folder["test"]
    streamed = image_folder(str(folder["root"]), folder["side"])
    tensors = DataBundle(xtr, ytr, xte, yte, 10, "same_images", Normalization.of(xtr, 255.0))
    lines = []
    for make in (lambda: StreamingData(streamed, 10**6, 100, 100, seed=0), lambda: DataModule(tensors, 10**6, 100, 100, seed=0)):
        with pytest.raises(LthError) as err:
            make()
        lines.append(str(err.value))
    assert lines[0] == lines[1] == f"data.batch_size=1000000 is larger than the training split ({len(xtr) - 100} examples)"
