"""One ``lth run`` in its own process, as the table benchmarks start theirs.

A fresh process per run counts its imports and keeps one run's memory from the next; one
thread each (``OMP_NUM_THREADS=1``), so ``--jobs`` runs share the cores without
oversubscribing them; W&B offline, never prompting. The output goes to ``OUT/<folder>.log``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def lth_run(out: Path, folder: str, recipe: str, overrides: list[str]) -> int:
    """Run ``recipe`` into ``out/folder`` with ``--set`` ``overrides`` (later ones win); its exit status."""
    args = [sys.executable, "-m", "lth_core.commands.cli", "run", recipe, "--out", str(out / folder)]
    for o in overrides:
        args += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    with open(out / f"{folder}.log", "w") as log:
        return subprocess.run(args, stdout=log, stderr=subprocess.STDOUT, env=env, check=False).returncode
