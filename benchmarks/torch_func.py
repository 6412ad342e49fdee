"""Would ``torch.func`` (``functional_call`` + ``vmap``) do what lth's stacked trials do?

K LeNet-300-100 replicates train side by side for ``--steps`` Adam steps on random
Fashion-MNIST-shaped batches, three ways, in one process, interleaved ``--repeats`` times:
``sequential`` (K separate models, the reference), ``batched`` (lth's
``vectorize_trials: batched`` layout: weights ``(K, in, out)``, one ``baddbmm`` per layer)
and ``func`` (the replicates' parameters stacked by ``torch.func.stack_module_state``, the
model's own forward under ``vmap(functional_call)``). Prints one JSON line: milliseconds
per network-step, speed-ups against sequential, and how far each stacked way's weights
are from the sequential run's (``vectorize_trials: true`` and ``parallel`` promise 0).

    python benchmarks/torch_func.py --threads 1
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap


def lenet() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))


def sequential(models, xs, ys) -> tuple[float, torch.Tensor]:
    ms = [copy.deepcopy(m) for m in models]
    opts = [torch.optim.Adam(m.parameters(), lr=1e-3, fused=True) for m in ms]
    start = time.perf_counter()
    for x, y in zip(xs, ys):
        for i, (m, opt) in enumerate(zip(ms, opts)):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(m(x[i]), y[i]).backward()
            opt.step()
    return time.perf_counter() - start, torch.stack([m[1].weight.detach() for m in ms])


def batched(models, xs, ys) -> tuple[float, torch.Tensor]:
    layers = (1, 3, 5)
    weights = [torch.stack([m[j].weight.detach().t() for m in models]).contiguous().requires_grad_() for j in layers]
    biases = [torch.stack([m[j].bias.detach() for m in models]).unsqueeze(1).contiguous().requires_grad_() for j in layers]
    opt = torch.optim.Adam(weights + biases, lr=1e-3, fused=True)
    k, b = xs.shape[1], xs.shape[2]
    start = time.perf_counter()
    for x, y in zip(xs, ys):
        opt.zero_grad(set_to_none=True)
        h = x.reshape(k, b, -1)
        for j, (w, bias) in enumerate(zip(weights, biases)):
            h = torch.baddbmm(bias, h, w)
            h = F.relu(h) if j < len(layers) - 1 else h
        (F.cross_entropy(h.reshape(k * b, -1), y.reshape(-1), reduction="sum") / b).backward()
        opt.step()
    return time.perf_counter() - start, weights[0].detach().transpose(1, 2)


def func(models, xs, ys) -> tuple[float, torch.Tensor]:
    params, buffers = stack_module_state([copy.deepcopy(m) for m in models])
    params = {k: v.detach().requires_grad_() for k, v in params.items()}
    base = copy.deepcopy(models[0]).to("meta")
    opt = torch.optim.Adam(list(params.values()), lr=1e-3, fused=True)
    loss = vmap(lambda p, bufs, x, y: F.cross_entropy(functional_call(base, (p, bufs), (x,)), y))
    start = time.perf_counter()
    for x, y in zip(xs, ys):
        opt.zero_grad(set_to_none=True)
        loss(params, buffers, x, y).sum().backward()
        opt.step()
    return time.perf_counter() - start, params["1.weight"].detach()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = [lenet() for _ in range(args.k)]
    xs, ys = torch.randn(args.steps, args.k, 60, 1, 28, 28), torch.randint(0, 10, (args.steps, args.k, 60))
    ways = {"sequential": sequential, "batched": batched, "func": func}
    times: dict[str, list[float]] = {name: [] for name in ways}
    final = {}
    for _ in range(args.repeats):
        for name, way in ways.items():
            seconds, final[name] = way(models, xs, ys)
            times[name].append(seconds)
    med = {name: statistics.median(t) for name, t in times.items()}
    print(json.dumps({
        "threads": args.threads, "k": args.k,
        "ms_per_network_step": {n: round(1000 * t / (args.steps * args.k), 3) for n, t in med.items()},
        "batched_vs_sequential": round(med["sequential"] / med["batched"], 3),
        "func_vs_sequential": round(med["sequential"] / med["func"], 3),
        "max_weight_diff": {n: float((final[n] - final["sequential"]).abs().max()) for n in ("batched", "func")},
    }))


if __name__ == "__main__":
    main()
