"""Where a lottery process's time and memory go: one ``lth run``, split into its parts.

Runs a recipe (by default issue 22's job: LeNet-300-100 on Fashion-MNIST, SGD 0.1, batch
128, global pruning, 2 levels x 10 epochs, evaluation at the end, W&B off) as ``lth run``
in a fresh process, so imports count, and reports the CPU time of its main thread by part:

- ``imports``: importing modules (torch, Lightning, lth, plugins), wherever it happens;
- ``data``: loading the data set (the plugin, its checks, the normalisation statistics);
- ``setup``: per-run set-up: models, trainers, checks, engines, anything else of lth's;
- ``training`` / ``evaluation``: Lightning's training and evaluation loops (batches included);
- ``pruning``: scoring and pruning between rounds;
- ``tickets`` / ``checkpoints``: writing (and reading) tickets and mid-round checkpoints;
- ``figures``: ``lth report``'s figures and tables at the end of a multi-trial run;
- ``wandb``: Weights & Biases (logger, logging, artifacts);
- ``other``: the rest (argument parsing, Lightning outside its loops, interpreter).

How: a thread samples the main thread's stack every ``--interval`` seconds and gives the
CPU time the main thread used since the last sample to the first part, in the order above,
that any frame of the stack belongs to (an import inside training is ``imports``).
Sampling costs the main thread a few percent. Memory: ``peak_rss_mb`` is the process's peak
resident set while it works (``VmHWM`` when ``lth run`` returns); ``peak_rss_at_exit_mb``
is what ``/usr/bin/time`` reports, which adds the interpreter's exit (torch's CUDA build
touches about 0.12 GB more while it unloads) and any child process. With ``--devices 2``
(data parallel on the CPU) every process reports its own. ``--trials K --vectorize
batched`` measures stacked trials.

The last line is a JSON object: ``share`` (each part's fraction of the main thread's CPU
time), ``cpu_s`` per part, ``wall_s``, ``peak_rss_mb``, ``peak_rss_at_exit_mb``.

    OMP_NUM_THREADS=1 python benchmarks/process_costs.py [--epochs 10] [--rounds 1] [--trials 1]
        [--vectorize batched] [--devices 2] [--tracking wandb] [--data digits --steps 200]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

#: Parts in priority order: (name, does this frame (file, function) belong to it?).
PARTS = (
    ("imports", lambda f, fn: f.startswith("<frozen importlib"), ),
    ("wandb", lambda f, fn: "/wandb/" in f or f.endswith("lottery/tracking.py")),
    ("figures", lambda f, fn: "/lth_core/reporting/" in f),
    ("tickets", lambda f, fn: f.endswith("tickets/ticket.py")),
    ("checkpoints", lambda f, fn: f.endswith("engines/checkpoints.py")),
    ("evaluation", lambda f, fn: f.endswith("loops/evaluation_loop.py")),
    ("training", lambda f, fn: f.endswith("loops/training_epoch_loop.py")),
    ("data", lambda f, fn: f.endswith("plugin_api/datasets.py") or "/lth_datasets/" in f),
    ("pruning", lambda f, fn: f.endswith("lottery/steps.py") and fn.startswith("prune") or f.endswith("plugin_api/criteria.py")),
    ("setup", lambda f, fn: "/lth_core/" in f or "/plugins/lth_" in f),
)
NAMES = [name for name, _ in PARTS] + ["other"]


class Sampler(threading.Thread):
    """Gives the main thread's CPU time, sample by sample, to the part its stack is in."""

    def __init__(self, interval: float):
        super().__init__(daemon=True)
        self.interval, self.main = interval, threading.main_thread().ident
        self.clock = time.pthread_getcpuclockid(self.main)
        self.seconds = dict.fromkeys(NAMES, 0.0)
        self.parts_of: dict = {}  # code object -> bit set of the parts it belongs to
        self.running = True

    def part(self) -> str:
        frame, bits = sys._current_frames().get(self.main), 0
        while frame is not None:
            code = frame.f_code
            if code not in self.parts_of:
                self.parts_of[code] = sum(1 << i for i, (_, test) in enumerate(PARTS) if test(code.co_filename, code.co_name))
            bits |= self.parts_of[code]
            frame = frame.f_back
        return NAMES[(bits & -bits).bit_length() - 1] if bits else "other"

    def run(self) -> None:
        last = time.clock_gettime(self.clock)
        while self.running:
            time.sleep(self.interval)
            now = time.clock_gettime(self.clock)
            self.seconds[self.part()] += now - last
            last = now


def memory() -> dict:
    """The process's resident set now and at its peak, in MB (from /proc/self/status)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {"rss_end_mb": round(int(fields["VmRSS"].split()[0]) / 1024, 1), "peak_rss_mb": round(int(fields["VmHWM"].split()[0]) / 1024, 1)}


def child(recipe: str, out: str, report: str, interval: float) -> int:
    """One ``lth run`` (this process, or a data-parallel rank Lightning started by re-running it)."""
    sampler = Sampler(interval)
    sampler.start()
    wall = time.perf_counter()
    from lth_core.commands.cli import main

    status = main(["run", recipe, "--out", out])
    sampler.running = False
    sampler.join()
    times = os.times()
    rank = int(os.environ.get("NODE_RANK", 0)) * 100 + int(os.environ.get("LOCAL_RANK", 0))
    Path(f"{report}.{rank}").write_text(json.dumps({
        "rank": rank, "status": status, "wall_s": round(time.perf_counter() - wall, 2),
        "process_cpu_s": round(times.user + times.system, 2), **memory(),
        "cpu_s": {k: round(v, 2) for k, v in sampler.seconds.items()},
    }))
    return status


def job(args: argparse.Namespace) -> dict:
    """The recipe: issue 22's job, or its variant the options ask for."""
    steps = args.steps or args.epochs * ((55000 if args.data == "fashion_mnist" else 1437 - 144) // args.batch)
    recipe = {
        "name": "process-costs", "seed": 0, "trials": args.trials, "model": "lenet300",
        "data": {"name": args.data, "batch_size": args.batch, **({"val_size": 5000} if args.data == "fashion_mnist" else {})},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "trainer": {"max_steps": steps, "val_check_interval": steps, "enable_progress_bar": False},
        "lottery": {"rounds": args.rounds, "scope": "global", "rate": 0.2},
        "tracking": {"backend": args.tracking, "mode": "offline"} if args.tracking == "wandb" else "none",
    }
    if args.vectorize:
        recipe["vectorize_trials"] = True if args.vectorize == "true" else args.vectorize
    if args.devices > 1:
        recipe["trainer"].update(accelerator="cpu", devices=args.devices, strategy="ddp")
    return recipe


def measure(recipe: dict, interval: float) -> dict:
    """Run ``recipe`` in a fresh process; its ranks' reports and the process tree's peak."""
    import yaml

    with tempfile.TemporaryDirectory(prefix="lth-costs-") as tmp:
        path, report = Path(tmp) / "recipe.yaml", Path(tmp) / "report"
        path.write_text(yaml.safe_dump(recipe))
        env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
        started = time.perf_counter()
        with open(Path(tmp) / "stderr", "w") as err:
            proc = subprocess.Popen([sys.executable, __file__, "--child", str(path), str(Path(tmp) / "run"), str(report), str(interval)],
                                    env=env, stdout=subprocess.DEVNULL, stderr=err)
            _, status, usage = os.wait4(proc.pid, 0)  # this child's own usage: its peak memory, exit included
            proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        ranks = [json.loads(p.read_text()) for p in sorted(Path(tmp).glob("report.*"))]
        if proc.returncode or not ranks or any(r["status"] for r in ranks):
            raise SystemExit(f"lth run failed:\n{(Path(tmp) / 'stderr').read_text()[-3000:]}")
    return {"ranks": ranks, "wall_s": wall, "usage": usage}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.exit(child(*sys.argv[2:5], float(sys.argv[5])))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="fashion_mnist", choices=("fashion_mnist", "digits"))
    ap.add_argument("--epochs", type=int, default=10, help="training epochs per level")
    ap.add_argument("--steps", type=int, default=0, help="training steps per level instead of --epochs")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=1, help="pruning rounds (levels - 1)")
    ap.add_argument("--trials", type=int, default=1)
    ap.add_argument("--vectorize", choices=("true", "batched", "parallel"), help="vectorize_trials (with --trials 2 or more)")
    ap.add_argument("--devices", type=int, default=1, help="data parallel on this many CPU processes")
    ap.add_argument("--tracking", default="none", choices=("none", "wandb"))
    ap.add_argument("--interval", type=float, default=0.005, help="seconds between stack samples")
    args = ap.parse_args()
    recipe = job(args)
    result = measure(recipe, args.interval)
    first = result["ranks"][0]
    total = sum(first["cpu_s"].values()) or 1.0
    for name in NAMES:
        print(f"{name:>12}  {first['cpu_s'][name]:8.2f} s  {first['cpu_s'][name] / total:6.1%}")
    peaks = [r["peak_rss_mb"] for r in result["ranks"]]
    print(f"main thread {total:.1f} s CPU, process {first['process_cpu_s']:.1f} s CPU, {result['wall_s']:.1f} s wall; "
          f"peak resident memory {max(peaks):.0f} MB while working (per process: {peaks})")
    import torch

    print(json.dumps({
        "share": {k: round(v / total, 4) for k, v in first["cpu_s"].items()},
        "cpu_s": first["cpu_s"], "main_thread_cpu_s": round(total, 2), "process_cpu_s": first["process_cpu_s"],
        "wall_s": round(result["wall_s"], 2), "peak_rss_mb": max(peaks), "peak_rss_per_process_mb": peaks,
        "peak_rss_at_exit_mb": round(result["usage"].ru_maxrss / 1024, 1),
        "rss_end_mb": first["rss_end_mb"], "processes": len(result["ranks"]),
        "job": {"data": args.data, "steps_per_level": recipe["trainer"]["max_steps"], "levels": args.rounds + 1,
                "trials": args.trials, "vectorize": args.vectorize, "devices": args.devices, "tracking": args.tracking},
        "threads": int(os.environ.get("OMP_NUM_THREADS", 0)) or None, "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
