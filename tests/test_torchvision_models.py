"""``model: {name: torchvision, arch: ...}``: torchvision's classification networks by name.

Built from scratch (nothing downloads), their stem fitted to small images, pretrained
weights only from a local file, and every mistake one line. A lottery of a torchvision
ResNet-18 on real images is in ``tests/test_streaming.py``.
"""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from lth_core import prunable_parameters
from lth_core.config import validate
from lth_core.errors import LthError
from lth_core.plugin_api.options import check_against_plugins
from lth_core.plugin_api.registry import get_registry

from test_cli import assert_user_error, lth, tiny_yaml


def build(shape=(3, 32, 32), classes=10, seed=0, **options) -> nn.Module:
    torch.manual_seed(seed)
    return get_registry().get("models", "torchvision").obj(input_shape=shape, num_classes=classes, **options)


def test_a_resnet18_for_small_images_has_the_cifar_stem_and_the_data_sets_classes():
    model = build(arch="resnet18")
    assert (model.conv1.kernel_size, model.conv1.stride, model.conv1.in_channels) == ((3, 3), (1, 1), 3)
    assert isinstance(model.maxpool, nn.Identity) and model.fc.out_features == 10
    names = list(prunable_parameters(model))
    assert names[0] == "conv1.weight" and names[-1] == "fc.weight" and len(names) == 21  # 17 convs + 3 shortcuts + fc
    assert not any("bn" in n or "bias" in n for n in names)
    grey = build((1, 28, 28), arch="resnet18")
    assert grey.conv1.in_channels == 1
    assert grey.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    # the same seed builds the same network: θ0 repeats
    assert all(torch.equal(a, b) for a, b in zip(build(arch="resnet18").state_dict().values(), model.state_dict().values()))


def test_imagenet_sized_images_keep_torchvisions_stem_and_other_families_get_stride_one():
    big = build((3, 96, 96), arch="resnet18")
    assert (big.conv1.kernel_size, big.conv1.stride) == ((7, 7), (2, 2)) and isinstance(big.maxpool, nn.MaxPool2d)
    kept = build(arch="resnet18", stem="imagenet")
    assert kept.conv1.kernel_size == (7, 7)
    mobile = build(arch="mobilenet_v2")
    assert mobile.features[0][0].stride == (1, 1) and mobile.classifier[-1].out_features == 10
    assert mobile.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_pretrained_weights_load_from_a_local_safetensors_or_weights_only_file(tmp_path):
    source = build(arch="resnet18", seed=5)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "w.safetensors"))
    torch.save(source.state_dict(), tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        loaded = build(arch="resnet18", seed=0, weights=str(tmp_path / name))
        assert all(torch.equal(v, source.state_dict()[k]) for k, v in loaded.state_dict().items())
    # ImageNet-shaped weights of 1000 classes: all but the adapted stem and the new head load
    imagenet = build((3, 224, 224), classes=1000, arch="resnet18", seed=7, stem="imagenet")
    save_file({k: v.contiguous() for k, v in imagenet.state_dict().items()}, str(tmp_path / "in.safetensors"))
    fresh, loaded = build(arch="resnet18", seed=1), build(arch="resnet18", seed=1, weights=str(tmp_path / "in.safetensors"))
    for key, value in loaded.state_dict().items():
        want = fresh if key.startswith(("conv1.", "fc.")) else imagenet
        assert torch.equal(value, want.state_dict()[key]), key


def test_wrong_weights_files_are_one_line(tmp_path):
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"x": print}))
    save_file({"other.weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    cases = {
        str(tmp_path / "nope.safetensors"): "does not exist",
        str(tmp_path): "is a folder, not a file",
        str(evil): "could not be read as a state dict",
        str(tmp_path / "other.safetensors"): "1 key(s) this network does not have (other.weight); no value for",
    }
    for path, words in cases.items():
        with pytest.raises(LthError) as err:
            build(arch="resnet18", weights=path)
        assert words in str(err.value) and "\n" not in str(err.value), err.value


def test_unknown_arch_and_options_are_refused_in_one_line(tmp_path):
    with pytest.raises(LthError, match="model.arch 'resnet19' is not one of torchvision's classification models; valid: .*resnet18"):
        build(arch="resnet19")
    registry = get_registry()
    recipe = validate({"name": "x", "model": {"name": "torchvision", "arch": "resnet18", "stem": "tiny"}, "data": "digits",
                       "tracking": "none"})
    with pytest.raises(LthError, match="model.stem"):
        check_against_plugins(recipe, registry)
    proc = lth("run", str(tiny_yaml(tmp_path, model={"name": "torchvision", "arch": "resnet19"})), "--out", str(tmp_path / "o"))
    assert_user_error(proc, "model.arch 'resnet19' is not one of torchvision's classification models", only_line=False)
