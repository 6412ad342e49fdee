"""Weights & Biases through Lightning's WandbLogger, never stopping at a login prompt.

``tracking.mode: auto`` goes online only when credentials exist (``WANDB_API_KEY`` or a
``~/.netrc`` entry for the W&B host); otherwise it runs offline and says how to sync.
An explicit ``WANDB_MODE`` in the environment wins, as W&B users expect.
"""

from __future__ import annotations

import netrc
import os
import re
import sys
from pathlib import Path
from typing import Any

from lth_core.config import Recipe


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


def make_logger(recipe: Recipe, out_dir: Path, say=print, group: str | None = None) -> Any | None:
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
    # A resumed run folder continues its W&B run (the id kept in the folder), not a new one.
    run_id = run_id_of(out_dir)
    run = wandb.init(
        id=run_id,
        resume="allow",
        project=cfg["project"],
        entity=cfg["entity"],
        name=f"{recipe.name}-{recipe.hash()}",
        dir=str(out_dir),
        group=group,
        mode=mode,
        config=recipe.to_dict(),
        tags=["lth", recipe["lottery"]["criterion"], recipe["lottery"]["rewind"]],
    )
    logger = WandbLogger(experiment=run, save_dir=str(out_dir))
    if mode == "offline":
        say(f"W&B is offline (no credentials); upload later with: {sync_command(out_dir, run_id)}")
    return logger


#: The file in a run folder that holds its W&B run's id.
RUN_ID_FILE = "wandb_run_id"


def run_id_of(out_dir: Path) -> str:
    """The folder's W&B run id: the one recorded by its first run, else a new one, recorded
    now so that a resumed (or grown) run logs into the same W&B run."""
    from lth_core.files import atomic_write_text

    path = Path(out_dir) / RUN_ID_FILE
    if path.is_file():
        recorded = path.read_text(encoding="utf-8", errors="replace").strip()
        if re.fullmatch(r"[a-z0-9]{8,64}", recorded):
            return recorded
    import secrets

    run_id = secrets.token_hex(8)
    atomic_write_text(path, run_id + "\n")
    return run_id


def sync_command(out_dir: Path, run_id: str) -> str:
    """How to upload an offline W&B run (every session of it: one folder per resume)."""
    return f"wandb sync {Path(out_dir) / 'wandb'}/offline-run-*-{run_id}"


def recorded_run(out_dir: Path) -> str | None:
    """Where a finished run folder's W&B run is, in words (None without one)."""
    path = Path(out_dir) / RUN_ID_FILE
    if not path.is_file():
        return None
    run_id = path.read_text(encoding="utf-8", errors="replace").strip()
    offline = any((Path(out_dir) / "wandb").glob(f"offline-run-*-{run_id}"))
    return f"W&B run {run_id}" + (f" (offline; upload with: {sync_command(out_dir, run_id)})" if offline else "")


def abandon(exit_code: int = 130) -> None:
    """End the W&B run of an interrupted lottery (nothing when W&B was never started): a
    run left open keeps its id in use, and the resumed process could not continue it."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)


def log_round(logger, row: dict, run_name: str) -> None:
    """One summary point per round (test accuracy, weights remaining, early-stop step...)."""
    if logger is None:
        return
    exp = logger.experiment
    prefix = "lottery" if run_name == "ticket" else f"control/{run_name}"
    exp.define_metric(f"{prefix}/*", step_metric=f"{prefix}/round")
    exp.log({f"{prefix}/{k}": v for k, v in row.items() if isinstance(v, (int, float))})


def log_ticket(logger, folder: Path, recipe: Recipe, row: dict, run_name: str) -> None:
    """Each finished ticket becomes a W&B artifact (mask, weights, metadata)."""
    if logger is None:
        return
    import wandb

    name = re.sub(r"[^A-Za-z0-9_.-]", "-", f"ticket-{recipe.name}-{recipe.hash()}-round{row['round']}-{run_name}")
    artifact = wandb.Artifact(name=name, type="ticket", metadata={k: v for k, v in row.items() if not isinstance(v, dict)})
    for f in sorted(folder.iterdir()):
        if f.is_file() and not f.name.startswith("."):
            artifact.add_file(str(f))
    logger.experiment.log_artifact(artifact)


def log_report(logger, summary: dict, out_dir: Path) -> None:
    """The run's report figures as images and its rounds as tables."""
    if logger is None:
        return
    import wandb

    from lth_core.reporting.report import Series, make_figures

    exp = logger.experiment
    columns = ["run", "round", "weights_remaining", "early_stop_step", "val_loss_min", "test_acc", "test_acc_final"]
    table = wandb.Table(columns=columns)
    for name, rows in [("ticket", summary["rounds"])] + list(summary["controls"].items()):
        for r in rows:
            table.add_data(name, *(r[c] for c in columns[1:]))
    written = sorted((out_dir / "report").glob("*.png"))  # lth run wrote the report just before
    figures = {p.stem: p for p in written} or make_figures([Series.from_dir(out_dir)], out_dir / "report")
    exp.log({"lottery/summary": table, **{f"report/{k}": wandb.Image(str(v)) for k, v in figures.items()}})


def finish(logger, summary: dict, out_dir: Path) -> None:
    if logger is None:
        return
    import wandb

    log_report(logger, summary, out_dir)
    exp = logger.experiment
    exp.summary["weights_remaining_final"] = summary["rounds"][-1]["weights_remaining"]
    exp.summary["test_acc_final_round"] = summary["rounds"][-1]["test_acc"]
    logger.finalize("success")
    wandb.finish()
    sys.stdout.flush()


def log_report_run(dirs: list, out: Path, project: str = "lth", group: str | None = None) -> None:
    """A W&B run holding a report: its figures as images and each series' rows as a table."""
    import wandb

    from lth_core.reporting.report import Series

    mode = resolve_mode("auto")
    if mode == "disabled":
        return
    out = Path(out)
    run = wandb.init(project=project, name=f"report-{out.name}", dir=str(out), group=group, mode=mode, job_type="report")
    columns = ["series", "run", "round", "weights_remaining", "test_acc", "test_acc_min", "test_acc_max", "early_stop_step"]
    table = wandb.Table(columns=columns)
    for d in dirs:
        s = Series.from_dir(d)
        for name, rows in s.runs().items():
            for r in rows:
                st = r.get("stats", {}).get("test_acc", {"min": r["test_acc"], "max": r["test_acc"]})
                table.add_data(s.label, name, r["round"], r["weights_remaining"], r["test_acc"], st["min"], st["max"], r["early_stop_step"])
    images = {f"report/{p.stem}": wandb.Image(str(p)) for p in sorted(out.glob("*.png"))}
    run.log({"report/rows": table, **images})
    run.finish()
