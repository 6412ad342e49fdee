"""The two data paths side by side: augmentation's cost, throughput, and memory (issue 19).

On real images made offline (Fashion-MNIST from Debian's package, or scikit-learn's digits
without it) written as PNG files in class folders in a temporary directory:

1. ``data.augment`` (random crop with padding 4 + horizontal flip) per training step: on a
   Fashion-MNIST batch of 60 (1x28x28) and a CIFAR-shaped batch of 128 (3x32x32, the same
   images padded and repeated over three channels), against the tensor path's own batch
   (gather + normalise) and a LeNet-300-100 training step (forward, backward, Adam).
2. Throughput: images per second of the training batches of the tensor path and of
   ``image_folder`` (``DataLoader`` with 0 and 2 workers) over the same images, and steps
   per second of a LeNet-300-100 training run (``lth``'s own loop) on each.
3. Memory: how far the resident peak of a fresh process rises (above where it stands
   once torch, torchvision and lth are imported) while it streams every training batch of
   ``--images`` images, and of a quarter as many, resized to ``--side`` pixels (2 workers,
   whose private memory is reported too), against one that holds the images as the tensor
   path would: a stream's rise does not grow with the data set; the tensor path's is its
   bytes.

The last line is a JSON object of the numbers and ratios.

    OMP_NUM_THREADS=1 python benchmarks/data_paths.py [--images 6000] [--steps 200] [--side 128]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` real uint8 images (N, 1, 28, 28) and labels: Fashion-MNIST, else the digits."""
    from lth_datasets import DEBIAN_FASHION_MNIST, IDX_FILES, digits, fashion_mnist

    if (DEBIAN_FASHION_MNIST / f"{IDX_FILES[0]}.gz").is_file():
        b = fashion_mnist()
        return b.train_x[:n], b.train_y[:n]
    b = digits()
    x = ((b.train_x - b.train_x.min()) / (b.train_x.max() - b.train_x.min()) * 255).to(torch.uint8)
    reps = -(-n // len(x))
    return x.repeat(reps, 1, 1, 1)[:n], b.train_y.repeat(reps)[:n]


def write_folder(root: Path, n: int) -> None:
    """``root/train`` (n images) and ``root/test`` (n / 5) as PNG files in class folders."""
    from torchvision.io import write_png

    x, y = images(n + n // 5)
    for i in range(len(y)):
        folder = root / ("train" if i < n else "test") / f"class{int(y[i])}"
        folder.mkdir(parents=True, exist_ok=True)
        write_png(x[i], str(folder / f"{i:06d}.png"))


def per_step_ms(fn, steps: int) -> float:
    fn(0)
    start = time.perf_counter()
    for s in range(steps):
        fn(s)
    return (time.perf_counter() - start) / steps * 1e3


def augmentation_cost(steps: int) -> dict:
    """ms per step of crop + flip against the batch it augments and a LeNet-300-100 step."""
    from lth_core.data.augment import Augmentation
    from lth_core.data.bundle import Normalization
    from lth_core.data.loaders import TensorLoader
    from lth_models import lenet300

    aug = Augmentation.of([{"name": "random_crop", "padding": 4}, {"name": "hflip"}])
    x, y = images(6000)
    grey = TensorLoader(x, y, 60, shuffle=True, seed=0, drop_last=True, normalization=Normalization.of(x, 255.0))
    colour_x = torch.nn.functional.pad(x, (2, 2, 2, 2)).repeat(1, 3, 1, 1)
    colour = TensorLoader(colour_x, y, 128, shuffle=True, seed=0, drop_last=True,
                          normalization=Normalization.of(colour_x, 255.0, per_channel=True))
    out = {}
    for name, ld in (("fashion_mnist_b60", grey), ("cifar_shaped_b128", colour)):
        order = ld.order(0)
        sel = lambda s: order[(s % len(ld)) * ld.batch_size:(s % len(ld) + 1) * ld.batch_size]  # noqa: E731
        plain = per_step_ms(lambda s: ld.take(sel(s)), steps)
        raw = ld.x[sel(0)]
        alone = per_step_ms(lambda s: aug(raw, 0, s, ld.batch_size), steps)
        out[name] = {"batch_ms": round(plain, 4), "augment_ms": round(alone, 4)}
    torch.manual_seed(0)
    model, batch = lenet300((1, 28, 28), 10), grey.take(grey.order(0)[:60])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def train_step(_):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(batch[0]), batch[1]).backward()
        opt.step()

    out["lenet300_step_ms"] = round(per_step_ms(train_step, steps), 4)
    return out


def loader_throughput(root: Path, steps: int) -> dict:
    """Images per second of the training batches (batch 60) on each path."""
    from lth_core.data.bundle import DataBundle
    from lth_core.data.loaders import DataModule
    from lth_core.data.streaming import StreamingData
    from lth_datasets.folders import image_folder

    stream = image_folder(str(root), 28)
    xs = torch.stack([stream.train[i][0] for i in range(len(stream.train))])
    ys = torch.tensor(stream.train.targets)
    tensors = DataBundle(xs, ys, xs[:10], ys[:10], 10, "same", stream.normalization)
    out = {}
    paths = {"tensor": lambda: DataModule(tensors, 60, 1000, 100, 0)}
    for w in (0, 2):
        paths[f"stream_workers_{w}"] = lambda w=w: StreamingData(stream, 60, 1000, 100, 0, workers=w)
    for name, make in paths.items():
        ld = make().train_loader(0)
        seen, start = 0, time.perf_counter()
        while seen < steps:
            for x, _ in ld:
                seen += 1
                if seen == steps:
                    break
        out[name] = round(steps * 60 / (time.perf_counter() - start))
    return out


def training_throughput(root: Path, steps: int) -> dict:
    """Steps per second of one LeNet-300-100 training run (rounds: 0) on each path."""
    from lth_core import DataBundle, hookimpl
    from lth_core.config import validate
    from lth_core.lottery.rounds import run_lottery
    from lth_core.plugin_api.registry import make_plugin_manager
    from lth_datasets.folders import image_folder

    class Same:
        @hookimpl
        def register_datasets(self, register):
            def same(root: str):
                s = image_folder(root, 28)
                xs = torch.stack([s.train[i][0] for i in range(len(s.train))])
                xt = torch.stack([s.test[i][0] for i in range(len(s.test))])
                return DataBundle(xs, torch.tensor(s.train.targets), xt, torch.tensor(s.test.targets), 10, "same", s.normalization)
            register("same_pngs", same)

    pm = make_plugin_manager()
    pm.register(Same(), name="same_pngs_plugin")
    out = {}
    for name, data in (("tensor", {"name": "same_pngs", "root": str(root)}),
                       ("stream_workers_2", {"name": "image_folder", "root": str(root), "image_size": 28, "workers": 2})):
        raw = {"name": "throughput", "model": "lenet300", "data": {**data, "batch_size": 60, "val_size": 100},
               "trainer": {"max_steps": steps, "val_check_interval": steps, "enable_progress_bar": False},
               "lottery": {"rounds": 0}, "tracking": "none"}
        with tempfile.TemporaryDirectory() as out_dir:
            start = time.perf_counter()
            run_lottery(validate(raw), Path(out_dir), say=lambda s: None, pm=pm)
            out[name] = round(steps / (time.perf_counter() - start), 1)
    return out


def _kb(path: str, key: str) -> float:
    """A ``key: N kB`` line of a /proc file, in MB."""
    line = next(line for line in Path(path).read_text().splitlines() if line.startswith(key + ":"))
    return int(line.split()[1]) / 1024


def child(kind: str, root: str, side: int, n: int) -> None:
    """(In a fresh process.) Stream or hold ``n`` training images; print how far the
    process's resident peak rose above where it stood once everything was imported
    (``VmHWM`` reset through ``/proc/self/clear_refs``), and the workers' private memory."""
    from lth_core.data.streaming import StreamingData
    from lth_datasets.folders import image_folder
    from lth_datasets.images import Part

    bundle = image_folder(root, side, stats_images=200)
    bundle.train = Part(bundle.train, list(range(n)))
    Path("/proc/self/clear_refs").write_text("5")  # the peak from here on
    base = _kb("/proc/self/status", "VmRSS")
    workers, held = [], 0
    if kind == "tensor":  # the whole split as one uint8 tensor, as a tensor-path bundle holds it
        data = torch.empty((n, *bundle.input_shape), dtype=torch.uint8)
        for i in range(n):
            data[i] = bundle.train[i][0]
        held = data.numel() / 2**20
    else:
        stream = StreamingData(bundle, 60, 1000, 0.1, 0, workers=2)
        for _ in stream.train_loader(0):
            pass
        kids = Path(f"/proc/self/task/{os.getpid()}/children").read_text().split()
        workers = [round(_kb(f"/proc/{k}/smaps_rollup", "Private_Dirty") + _kb(f"/proc/{k}/smaps_rollup", "Private_Clean"), 1)
                   for k in kids]
    rise = _kb("/proc/self/status", "VmHWM") - base
    print(json.dumps({"peak_rise_mb": round(rise, 1), "worker_private_mb": workers, "held_mb": round(held, 1)}))


def memory(root: Path, side: int, n: int) -> dict:
    """Peak resident memory streaming n and n/4 images, and holding n as tensors."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = {}
    for kind, count in (("stream", n // 4), ("stream", n), ("tensor", n)):
        proc = subprocess.run([sys.executable, __file__, "--child", kind, str(root), str(side), str(count)],
                              capture_output=True, text=True, env=env, check=True)
        out[f"{kind}_{count}"] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6000, help="training images written as PNG")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--side", type=int, default=128, help="resize to this side for the memory part")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], args.child[1], int(args.child[2]), int(args.child[3]))
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_folder(root, args.images)
        aug = augmentation_cost(args.steps)
        print("augmentation, ms per step:", json.dumps(aug))
        loaders = loader_throughput(root, args.steps)
        print("training batches, images/s:", json.dumps(loaders))
        training = training_throughput(root, args.steps)
        print("LeNet-300-100 training run, steps/s:", json.dumps(training))
        mem = memory(root, args.side, args.images)
        print(f"peak memory, MB ({args.side}x{args.side} images):", json.dumps(mem))
    small, big, held = mem[f"stream_{args.images // 4}"], mem[f"stream_{args.images}"], mem[f"tensor_{args.images}"]
    print(json.dumps({
        "augment_ms": {k: v["augment_ms"] for k, v in aug.items() if isinstance(v, dict)},
        "augment_vs_lenet300_step": round(aug["fashion_mnist_b60"]["augment_ms"] / aug["lenet300_step_ms"], 4),
        "images_per_s": loaders, "train_steps_per_s": training,
        "stream_vs_tensor_images_per_s": round(loaders["stream_workers_2"] / loaders["tensor"], 4),
        "stream_vs_tensor_train_steps_per_s": round(training["stream_workers_2"] / training["tensor"], 4),
        "peak_mb": mem,
        "stream_peak_rise_mb": {str(args.images // 4): small["peak_rise_mb"], str(args.images): big["peak_rise_mb"]},
        "tensor_peak_rise_mb": held["peak_rise_mb"],
        "data_mb": held["held_mb"],
    }))


if __name__ == "__main__":
    main()
