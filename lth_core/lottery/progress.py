"""How far a lottery is: each run's step/total, its last validation loss, its ETA and the
whole lottery's (rounds x runs x trials).

A lottery of 16 rounds runs for most of an hour; one line per finished run is not enough
to know whether to wait or come back later. :class:`Progress` counts the runs a recipe
will train and the seconds each optimiser step has taken so far; :class:`ProgressBar`, a
Lightning callback added to every run, reports from inside the run. Three ways to show it:

- ``live``: one line redrawn in place (a terminal, or a notebook, which honours ``\\r``);
- ``lines``: a plain line every ``LTH_PROGRESS_SECONDS`` seconds (default 60) when the
  output is a file or CI's log, which carriage returns would only litter;
- ``off``: nothing (``lth run --quiet``, ``lth_core.run(quiet=True)``).
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, Callable, TextIO

import pytorch_lightning as pl

#: Seconds between two plain progress lines when the output is not a terminal.
DEFAULT_SECONDS = 60.0


def display_mode(stream: TextIO | None = None, quiet: bool = False) -> str:
    """``off`` when quiet, ``live`` on a terminal or in a notebook, else ``lines``."""
    if quiet:
        return "off"
    stream = stream or sys.stderr
    in_notebook = "ipykernel" in sys.modules
    return "live" if in_notebook or getattr(stream, "isatty", lambda: False)() else "lines"


def runs_of(recipe: Any) -> int:
    """How many training runs a recipe trains: every trial's rounds (round 0 dense, then
    ``lottery.rounds`` tickets, each with its controls), summed over sweep points."""
    if recipe["sweep"]:
        return sum(runs_of(sub) for _point, sub in recipe.sweep_points())
    rounds = 1 if recipe["ticket"] else recipe["lottery"]["rounds"]
    return recipe["trials"] * (1 + rounds * (1 + len(recipe["controls"])))


def clock(seconds: float) -> str:
    """``1:02:03`` or ``2:03``: an ETA at a glance."""
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """The lottery's clock: runs done of ``total``, seconds per optimiser step measured on
    the steps trained so far (reused runs cost nothing), and where output goes."""

    def __init__(self, total_runs: int, steps_per_run: int, mode: str = "lines", stream: TextIO | None = None,
                 every: float | None = None, together: int = 1):
        self.total, self.steps_per_run, self.mode = max(1, total_runs), steps_per_run, mode
        #: Runs trained as one (``vectorize_trials``: a recipe's trials): a step of theirs is a step of each.
        self.together = max(1, together)
        self.stream = stream or sys.stderr
        self.every = float(os.environ.get("LTH_PROGRESS_SECONDS", DEFAULT_SECONDS)) if every is None else every
        self.done, self.trained_steps, self.trained_seconds = 0, 0, 0.0
        self.live = False  # a live line is on screen and must be cleared before other output

    @classmethod
    def for_recipe(cls, recipe: Any, quiet: bool = False, stream: TextIO | None = None) -> "Progress":
        steps = recipe["trainer"].get("max_steps", -1)
        together = recipe["trials"] if recipe["vectorize_trials"] and recipe["trials"] > 1 else 1
        return cls(runs_of(recipe), steps if steps and steps > 0 else 0, display_mode(stream, quiet), stream, together=together)

    def wrap(self, say: Callable[[str], None]) -> Callable[[str], None]:
        """``say`` that first clears a live line (and says nothing when output is off, but warnings)."""
        def said(text: str) -> None:
            if self.mode == "off" and not text.startswith("warning"):
                return
            self.clear()
            say(text)
        return said

    def run_finished(self, steps: int = 0, seconds: float = 0.0) -> None:
        """A run ended (trained ``steps`` in ``seconds``, or 0 and 0 when it was reused)."""
        self.done += 1
        self.trained_steps += steps
        self.trained_seconds += seconds
        self.clear()

    def seconds_per_step(self, steps: int = 0, seconds: float = 0.0) -> float:
        """Measured so far, counting the run in progress (``steps`` in ``seconds``)."""
        n, t = self.trained_steps + steps, self.trained_seconds + seconds
        return t / n if n else math.nan

    def line(self, label: str, step: int, total: int, val_loss: float | None, rate: float) -> str:
        """``round 2/5 [ticket] step 300/400  val loss 0.0812  run ETA 0:04  lottery ETA 1:12 (run 5/16)``."""
        parts = [f"{label} step {step}/{total}" if total else f"{label} step {step}"]
        if total and self.mode == "live":  # a bar where the line is redrawn; plain lines stay plain
            done = min(20, int(20 * step / total))
            parts[0] += " [" + "#" * done + "-" * (20 - done) + "]"
        if val_loss is not None:
            parts.append(f"val loss {val_loss:.4f}")
        if total:
            left = max(0, total - step)
            parts.append(f"run ETA {clock(left * rate)}")
            now = max(1, min(self.together, self.total - self.done))  # runs training in this fit
            later = max(0, self.total - self.done - now) * self.steps_per_run / self.together
            first = min(self.done + 1, self.total)
            runs = f"run {first}" if now == 1 else f"runs {first}-{first + now - 1}"
            parts.append(f"lottery ETA {clock((left + later) * rate)} ({runs}/{self.total})")
        return "  ".join(parts)

    def show(self, text: str) -> None:
        """Redraw the live line, or print a plain one."""
        if self.mode == "live":
            self.stream.write("\r\033[K" + text)
            self.live = True
        elif self.mode == "lines":
            self.stream.write(text + "\n")
        self.stream.flush()

    def clear(self) -> None:
        if self.live:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.live = False


class ProgressBar(pl.Callback):
    """Reports one run's step, last validation loss and ETAs while it trains.

    It acts between Lightning calls only (``multi_step_safe``: runs keep training several
    steps per call) and holds nothing a checkpoint needs. ``view`` is the lottery's view of
    the run (its ``step`` and ``history``); a stacked fit reports its first replicate.
    """

    multi_step_safe = True
    stack_safe = True  # it only reads the step and history, of a stacked model too

    def __init__(self, progress: Progress, label: str, view: Any, first_step: int, total: int):
        self.progress, self.label, self.view = progress, label, view
        self.first, self.total = first_step, total
        self.started = time.monotonic()
        self.last_shown = -math.inf if progress.mode == "live" else time.monotonic()

    def state_dict(self) -> dict:
        return {}  # everything it shows is read from the run

    def _now(self, pl_module: Any) -> tuple[int, float | None]:
        source = pl_module if hasattr(pl_module, "histories") else self.view
        history = source.histories[0] if hasattr(source, "histories") else source.history
        loss = history[-1].get("val_loss") if history else None
        return int(source.step), loss

    def _report(self, pl_module: Any, force: bool = False) -> None:
        now = time.monotonic()
        wait = 0.2 if self.progress.mode == "live" else self.progress.every
        if self.progress.mode == "off" or (not force and now - self.last_shown < wait):
            return
        self.last_shown = now
        step, loss = self._now(pl_module)
        rate = self.progress.seconds_per_step(step - self.first, now - self.started)
        self.progress.show(self.progress.line(self.label, step, self.total, loss, rate))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._report(pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.progress.clear()
