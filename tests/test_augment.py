"""``data.augment``: random crops with padding and horizontal flips on the tensor path.

Real images (Fashion-MNIST's bytes where Debian's package is installed, else the digits),
checked against a per-image reference written the obvious way; the draws depend only on
the seed and the step (so steps per call, a resumed run and data parallel shares see the
same batches), and a lottery with augmentation resumes bit for bit after a stop.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from lth_core.data.augment import Augmentation
from lth_core.data.loaders import StepChunks, TensorLoader
from lth_core.errors import LthError
from lth_core.config import load_recipe, validate
from lth_core.lottery.rounds import run_lottery

from test_resume import stopped_and_resumed, tiny

CROP_FLIP = [{"name": "random_crop", "padding": 4}, {"name": "hflip"}]


@pytest.fixture(scope="module")
def images():
    """uint8 images (N, 1, 28, 28) of Fashion-MNIST when installed, else digits scaled to bytes."""
    from lth_datasets import DEBIAN_FASHION_MNIST, IDX_FILES, fashion_mnist, digits

    if (DEBIAN_FASHION_MNIST / f"{IDX_FILES[0]}.gz").is_file():
        b = fashion_mnist()
        return b.train_x[:600], b.train_y[:600], b.normalization
    b = digits()
    x = b.train_x
    return ((x - x.min()) / (x.max() - x.min()) * 255).to(torch.uint8)[:600], b.train_y[:600], None


def _reference(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, padding: int) -> torch.Tensor:
    """One image at a time: pad, slice the window, mirror if drawn."""
    h, w = x.shape[-2:]
    out = []
    for img, (r, c), flip in zip(x, offsets.tolist(), flips.tolist()):
        crop = F.pad(img, (padding,) * 4)[:, r:r + h, c:c + w]
        out.append(crop.flip(-1) if flip else crop)
    return torch.stack(out)


def test_crops_and_flips_are_the_per_image_ones_they_draw(images):
    x, _, _ = images
    aug = Augmentation.of(CROP_FLIP)
    batch = x[:64]
    got = aug(batch, seed=7, first_step=12, batch_size=64)
    offsets, flips = aug.draws(7, 12, 64, 28, 28)
    assert torch.equal(got, _reference(batch, offsets, flips, 4))
    assert got.dtype == torch.uint8 and got.shape == batch.shape
    assert 0 < int(flips.sum()) < 64 and offsets.min() >= 0 and offsets.max() <= 8 and len(offsets.unique()) > 3
    changed = (got != batch).flatten(1).any(1)
    assert int(changed.sum()) > 48  # most images move; an unshifted, unflipped one may not
    # black borders come in with a shift: a crop offset 0 on both axes starts with 4 padded rows
    corner = (offsets == 0).all(1) & ~flips
    if corner.any():
        assert int(got[corner][:, :, :4].max()) == 0


@pytest.mark.parametrize("spec", [[{"name": "hflip", "p": 0.5}, {"name": "random_crop", "padding": 3}],
                                  [{"name": "random_crop", "padding": 4}, {"name": "random_crop", "padding": 2}, "hflip"]],
                         ids=["flip_then_crop", "two_crops_then_flip"])
def test_any_list_is_its_ops_applied_one_after_another(images, spec):
    """The ops compose into one gather; the reference applies them image by image, in order."""
    x, _, _ = images
    aug = Augmentation.of(spec)
    want = x[:40]
    for (name, opt), drawn in zip(aug.ops, aug.draws(11, 3, 40, 28, 28)):
        if name == "random_crop":
            want = _reference(want, drawn, torch.zeros(40, dtype=torch.bool), opt["padding"])
        else:
            want = torch.stack([img.flip(-1) if f else img for img, f in zip(want, drawn.tolist())])
    assert torch.equal(aug(x[:40], 11, 3, 40), want)


def test_draws_depend_on_seed_and_step_only(images):
    x, _, _ = images
    aug = Augmentation.of(CROP_FLIP)
    a = aug(x[:32], seed=1, first_step=5, batch_size=32)
    assert torch.equal(a, aug(x[:32], seed=1, first_step=5, batch_size=32))
    assert not torch.equal(a, aug(x[:32], seed=1, first_step=6, batch_size=32))
    assert not torch.equal(a, aug(x[:32], seed=2, first_step=5, batch_size=32))
    # three steps at once are the three steps one by one
    three = aug(x[:96], seed=1, first_step=5, batch_size=32)
    assert torch.equal(three, torch.cat([aug(x[32 * i:32 * i + 32], 1, 5 + i, 32) for i in range(3)]))


def test_step_by_step_chunked_resumed_and_sharded_batches_agree(images):
    """The loader's step ``s`` batch is the same from step 0, resumed at ``s``, in chunks of 7,
    and as the concatenation of two data-parallel shares."""
    x, y, norm = images

    def loader(world=1, rank=0):
        ld = TensorLoader(x, y, 32, shuffle=True, seed=3, drop_last=True, normalization=norm)
        ld.augment, ld.rank, ld.world = Augmentation.of(CROP_FLIP), rank, world
        return ld

    per_epoch = len(loader())
    steps = [b for e in range(2) for b in _epoch(loader(), e)]
    resumed = loader()
    resumed.epoch, resumed.skip_batches = divmod(per_epoch + 3, per_epoch)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(resumed, steps[per_epoch + 3:]))
    chunked = [b for xs, ys in StepChunks(loader(), 4, 2 * per_epoch, 7) for b in zip(xs.split(32), ys.split(32))]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(chunked, steps[4:]))
    shares = zip(_epoch(loader(2, 0), 1), _epoch(loader(2, 1), 1))
    assert all(torch.equal(torch.cat([a[0], b[0]]), s[0]) for (a, b), s in zip(shares, steps[per_epoch:]))
    plain = TensorLoader(x, y, 32, shuffle=True, seed=3, drop_last=True, normalization=norm)
    assert not torch.equal(next(iter(plain))[0], steps[0][0])


def _epoch(ld: TensorLoader, epoch: int) -> list:
    ld.epoch = epoch
    return list(ld)


def test_a_lottery_with_augmentation_resumes_bit_for_bit(tmp_path, pm):
    raw = tiny()
    raw["data"]["augment"] = [{"name": "random_crop", "padding": 2}, "hflip"]
    stopped_and_resumed(raw, tmp_path, pm, round_=1, step=50)


def test_augmentation_changes_training_and_many_steps_per_call_equal_one(tiny_raw, tmp_path):
    tiny_raw["trainer"]["max_steps"] = 70
    tiny_raw["lottery"]["rounds"] = 1
    runs = {}
    crop_flip = [{"name": "random_crop", "padding": 2}, "hflip"]  # digits are 8x8
    for name, augment, chunk in (("plain", [], 50), ("one", crop_flip, 1), ("many", crop_flip, 50)):
        raw = copy.deepcopy(tiny_raw)
        raw["data"]["augment"], raw["steps_per_call"] = augment, chunk
        runs[name] = run_lottery(validate(raw), tmp_path / name, say=lambda s: None)
    assert json.dumps(runs["one"]["rounds"]) == json.dumps(runs["many"]["rounds"])
    assert json.dumps(runs["plain"]["rounds"]) != json.dumps(runs["many"]["rounds"])


def test_augmenting_inputs_that_are_not_images_is_refused_in_one_line(tiny_raw, tmp_path, pm):
    class Flat:
        from lth_core import hookimpl

        @hookimpl
        def register_datasets(self, register):
            def flat_digits():
                from lth_datasets import digits

                b = digits()
                return type(b)(b.train_x.flatten(1), b.train_y, b.test_x.flatten(1), b.test_y, 10, "flat")
            register("flat_digits", flat_digits)

    pm.register(Flat(), name="flat_plugin")
    tiny_raw["data"] = {"name": "flat_digits", "augment": ["hflip"]}
    with pytest.raises(LthError) as err:
        run_lottery(validate(tiny_raw), tmp_path, say=lambda s: None, pm=pm)
    assert str(err.value) == ("data.augment (hflip) needs images shaped (channels, height, width); data set flat gives inputs "
                              "shaped (64,): remove data.augment or use an image data set")


def test_the_cifar_recipes_augment_as_their_sources_and_say_so():
    from lth_core.config import bundled_recipes

    for name in ("vgg19_cifar10", "resnet20_cifar10"):
        assert load_recipe(name)["data"]["augment"] == CROP_FLIP
        comment = bundled_recipes()[name].read_text().split("\ndescription:")[0]
        assert "random" in comment and "crops" in comment and "flips" in comment and "padded by 4" in comment
    others = [n for n in bundled_recipes() if n not in ("vgg19_cifar10", "resnet20_cifar10")]
    assert all(not load_recipe(n)["data"].get("augment") for n in others)
