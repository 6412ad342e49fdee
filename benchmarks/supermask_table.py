"""Supermasks vs dense training on Fashion-MNIST: the README's evidence for lth_supermask.

Runs the bundled supermask recipes with one shortened budget (``--steps`` per run; the
recipes themselves train 9,000) and prints Markdown tables, then a JSON line:

- each initialisation: edge-popup supermask (k = 0.5, weights never trained) vs the same
  LeNet-300-100 trained densely from that initialisation (``dense_inits_fashion_mnist``);
- the Bernoulli supermask of Zhou et al. (ticket = most likely mask, expected network,
  mean over 10 sampled masks);
- the sweep over k and the width sweep (0.5x..4x hidden units);
- with ``--conv``: Conv-4 (non-affine batch norm) supermask vs Conv-4 trained densely.

    python benchmarks/supermask_table.py OUT_DIR [--steps 3000] [--jobs 2] [--conv | --conv-only]

Runs go to OUT_DIR/<name>; rerunning reuses finished runs. Learning-rate milestones are
scaled to the budget (55% and 83% of it, where the recipes put them).
"""

from __future__ import annotations

import argparse
import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lth_runs import lth_run

INITS = "[kaiming_normal, signed_kaiming_constant, {name: scaled_signed_kaiming_constant, density: 0.5}]"


def jobs(steps: int, conv: bool) -> dict[str, tuple[str, list[str]]]:
    """name -> (bundled recipe, overrides)."""
    sgd = [f"optimizer.milestones=[{int(steps * 0.55)}, {int(steps * 0.83)}]"]
    out = {
        "supermask_inits": ("supermask_lenet300_fashion_mnist", sgd + [f"sweep={{init: {INITS}}}"]),
        "dense_inits": ("dense_inits_fashion_mnist", []),
        "bernoulli": ("supermask_bernoulli_lenet300_fashion_mnist", []),
        "k_sweep": ("supermask_k_sweep_fashion_mnist", sgd),
        "width_sweep": ("supermask_width_sweep_fashion_mnist", sgd),
    }
    if conv:
        out["conv4_supermask"] = ("supermask_conv4_fashion_mnist", [f"optimizer.milestones=[{int(steps * 0.67)}]"])
        out["conv4_dense"] = ("supermask_conv4_fashion_mnist", [
            "callbacks=[]", "init=null", "model.batchnorm=none", "optimizer={name: adam, lr: 3.0e-4}"])
    return out


def run(out: Path, name: str, recipe: str, overrides: list[str], steps: int) -> None:
    common = [f"trainer.max_steps={steps}", "tracking=none", "trainer.enable_progress_bar=false"]
    rc = lth_run(out, name, recipe, common + overrides)
    if rc != 0:
        raise subprocess.CalledProcessError(rc, f"lth run {recipe} --out {out / name}")


def _sweep(out: Path, name: str) -> list[dict]:
    return json.loads((out / name / "sweep.json").read_text())["points"]


def _row(out: Path, name: str) -> dict:
    return json.loads((out / name / "summary.json").read_text())["rounds"][-1]


def _init_name(point: dict) -> str:
    init = point["init"]
    return init if isinstance(init, str) else f"{init['name']} (k={init['density']})"


def tables(out: Path) -> tuple[str, dict]:
    results: dict = {}
    lines = ["| initialisation | supermask k=0.5 (weights untrained) | dense training (all weights) |", "|---|---|---|"]
    masks, dense = _sweep(out, "supermask_inits"), _sweep(out, "dense_inits")
    for m, d in zip(masks, dense):
        name = _init_name(m["point"])
        results[f"init/{name}"] = {"supermask": m["last_round"]["test_acc_final"], "dense": d["last_round"]["test_acc_final"]}
        lines.append(f"| {name} | {m['last_round']['test_acc_final']:.2%} | {d['last_round']['test_acc_final']:.2%} |")
    b = _row(out, "bernoulli")
    results["bernoulli"] = {k: v for k, v in b.items() if k.startswith("supermask_") or k in ("test_acc_final", "weights_remaining")}
    lines += ["", "| Bernoulli supermask | density | test accuracy |", "|---|---|---|",
              f"| most likely mask (the ticket) | {b['weights_remaining']:.1%} | {b['test_acc_final']:.2%} |",
              f"| expected network (w x sigmoid(s)) | {b['supermask_expected_density']:.1%} (expected) | {b['supermask_test_acc_expected']:.2%} |",
              f"| 10 sampled masks, mean ± std | | {b['supermask_test_acc_sampled_mean']:.2%} ± {b['supermask_test_acc_sampled_std']:.2%} |"]
    lines += ["", "| k (fraction kept per layer) | test accuracy |", "|---|---|"]
    for p in _sweep(out, "k_sweep"):
        results[f"k/{p['point']['callbacks.0.density']}"] = p["last_round"]["test_acc_final"]
        lines.append(f"| {p['point']['callbacks.0.density']} | {p['last_round']['test_acc_final']:.2%} |")
    lines += ["", "| hidden widths | weights | supermask test accuracy |", "|---|---|---|"]
    for p in _sweep(out, "width_sweep"):
        h = p["point"]["model.hidden"]
        n = 784 * h[0] + h[0] * h[1] + h[1] * 10
        results[f"width/{h[0]}-{h[1]}"] = p["last_round"]["test_acc_final"]
        lines.append(f"| {h[0]}-{h[1]} | {n:,} | {p['last_round']['test_acc_final']:.2%} |")
    return "\n".join(lines), results


def conv_table(out: Path) -> tuple[str, dict]:
    cs, cd = _row(out, "conv4_supermask"), _row(out, "conv4_dense")
    lines = ["| Conv-4 | test accuracy |", "|---|---|",
             f"| supermask k=0.5, non-affine BN | {cs['test_acc_final']:.2%} |", f"| dense training | {cd['test_acc_final']:.2%} |"]
    return "\n".join(lines), {"conv4": {"supermask": cs["test_acc_final"], "dense": cd["test_acc_final"]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--conv", action="store_true", help="also Conv-4 (slow on CPU: ~0.4 s a step)")
    ap.add_argument("--conv-only", action="store_true", help="only the Conv-4 pair (e.g. with its own --steps)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    todo = jobs(args.steps, args.conv or args.conv_only)
    if args.conv_only:
        todo = {k: v for k, v in todo.items() if k.startswith("conv4")}
    with ThreadPoolExecutor(args.jobs) as pool:
        for f in [pool.submit(run, out, n, r, o, args.steps) for n, (r, o) in todo.items()]:
            f.result()
    parts = [] if args.conv_only else [tables(out)]
    if args.conv or args.conv_only:
        parts.append(conv_table(out))
    print("\n\n".join(text for text, _ in parts))
    print(json.dumps({"steps": args.steps, **{k: v for _, r in parts for k, v in r.items()}}))

if __name__ == "__main__":
    main()
