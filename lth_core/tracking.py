"""Weights & Biases through Lightning's WandbLogger, never stopping at a login prompt.

``tracking.mode: auto`` goes online only when credentials exist (``WANDB_API_KEY`` or a
``~/.netrc`` entry for the W&B host); otherwise it runs offline and says how to sync.
An explicit ``WANDB_MODE`` in the environment wins, as W&B users expect.
"""

from __future__ import annotations

import netrc
import os
import sys
from pathlib import Path
from typing import Any

from lth_core.recipes import Recipe


def has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        rc = netrc.netrc(os.environ.get("NETRC") or None)
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].rstrip("/")
    return rc.authenticators(host) is not None


def resolve_mode(configured: str) -> str:
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled"):
        return env
    if configured != "auto":
        if configured == "online" and not has_wandb_credentials():
            return "offline"
        return configured
    return "online" if has_wandb_credentials() else "offline"


def make_logger(recipe: Recipe, out_dir: Path, say=print) -> Any | None:
    """A WandbLogger for the whole lottery (all rounds share one W&B run), or None."""
    cfg = recipe["tracking"]
    if cfg["backend"] == "none":
        return None
    mode = resolve_mode(cfg["mode"])
    if mode == "disabled":
        return None
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb
    from pytorch_lightning.loggers import WandbLogger

    # Start the run ourselves so its settings are exactly ours (mode, folder, no prompt).
    run = wandb.init(
        project=cfg["project"],
        entity=cfg["entity"],
        name=f"{recipe.name}-{recipe.hash()}",
        dir=str(out_dir),
        mode=mode,
        config=recipe.to_dict(),
        tags=["lth", recipe["lottery"]["criterion"], recipe["lottery"]["rewind"]],
    )
    logger = WandbLogger(experiment=run, save_dir=str(out_dir))
    if mode == "offline":
        run_dir = Path(run.dir).parent
        say(f"W&B is offline (no credentials); upload later with: wandb sync {run_dir}")
    return logger


def log_round(logger, row: dict, run_name: str) -> None:
    """One summary point per round (test accuracy, weights remaining, early-stop step...)."""
    if logger is None:
        return
    exp = logger.experiment
    prefix = "lottery" if run_name == "ticket" else f"control/{run_name}"
    exp.define_metric(f"{prefix}/*", step_metric=f"{prefix}/round")
    exp.log({f"{prefix}/{k}": v for k, v in row.items() if isinstance(v, (int, float))})


def finish(logger, summary: dict) -> None:
    if logger is None:
        return
    import wandb

    exp = logger.experiment
    columns = ["run", "round", "weights_remaining", "early_stop_step", "val_loss_min", "test_acc", "test_acc_final"]
    table = wandb.Table(columns=columns)
    for name, rows in [("ticket", summary["rounds"])] + list(summary["controls"].items()):
        for r in rows:
            table.add_data(name, *(r[c] for c in columns[1:]))
    exp.log({"lottery/summary": table})
    exp.summary["weights_remaining_final"] = summary["rounds"][-1]["weights_remaining"]
    exp.summary["test_acc_final_round"] = summary["rounds"][-1]["test_acc"]
    logger.finalize("success")
    wandb.finish()
    sys.stdout.flush()
