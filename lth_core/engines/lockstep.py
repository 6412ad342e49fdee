"""``vectorize_trials``: the K trials of a recipe run in lockstep and train stacked.

Each trial runs the unchanged lottery (:func:`lth_core.lottery.rounds.run_lottery`) in a thread
of its own, but the threads take strict turns: only one of them runs at any time, always
in the order trial 0, 1, ..., K-1, so everything a trial does outside training (build θ0,
prune, rewind, save its ticket, write its files) happens exactly as in a sequential run.
When a trial reaches a training run it hands it over (a :class:`lth_core.engines.stacked.Job`)
and waits; once every trial has handed one over, the main thread trains them all as one
stacked model (:func:`lth_core.engines.stacked.train_stacked`, Lightning in the main thread) and
gives each trial its trained network and history back. The ticket, its controls and every
round are stacked across trials in this way: trial i's control ``random_reinit`` of round
k trains beside the other trials' ``random_reinit`` of round k.

The global RNG (torch, numpy, Python) is saved when a trial hands over and restored when
it resumes, so a trial never sees another's draws. An error in one trial stops all of
them, with that trial's own message; a finished ticket is reused on a rerun as always.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from lth_core.engines.data_parallel import declared_world
from lth_core.errors import LthError
from lth_core.lottery.rounds import run_lottery
from lth_core.config import Recipe
from lth_core.engines.stacked import OFF, Job, ReplicaDiverged, train_stacked


class _Abandoned(BaseException):
    """Unwinds a waiting trial when another one failed (never caught by ``except Exception``)."""


def _rng_state() -> tuple:
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def _set_rng_state(state: tuple) -> None:
    torch.set_rng_state(state[0])
    np.random.set_state(state[1])
    random.setstate(state[2])


class Lockstep:
    """K worker threads that run one at a time and meet to train (see the module docstring)."""

    def __init__(self, k: int, mode: str = "stacked"):
        self.k, self.mode = k, mode
        self._go = [threading.Semaphore(0) for _ in range(k)]
        self._back = threading.Semaphore(0)
        self._jobs: dict[int, Job] = {}
        self._done = [False] * k
        self._errors: dict[int, BaseException] = {}
        self._abort = False

    # --- the trials' side -------------------------------------------------------------
    def fit_for(self, trial: int) -> Callable:
        """Trial ``trial``'s replacement for ``trainer.fit`` (``lottery.Run.fit``)."""

        def fit(run, module, trainer, start_step: int, keep=None) -> None:
            job = Job(trial, run, module, trainer, start_step, keep=keep)
            self._jobs[trial] = job
            self._park(trial)
            torch.set_rng_state(job.rng)  # what training drew (dropout) is drawn in this trial
            if job.error is not None:
                raise job.error

        return fit

    def _park(self, trial: int) -> None:
        state = _rng_state()
        self._back.release()
        self._go[trial].acquire()
        if self._abort:
            raise _Abandoned()
        _set_rng_state(state)

    def _worker(self, trial: int, body: Callable[[], Any], results: list) -> None:
        self._go[trial].acquire()
        try:
            if not self._abort:
                results[trial] = body()
        except _Abandoned:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which raises it
            self._errors[trial] = exc
        finally:
            self._done[trial] = True
            self._back.release()

    # --- the main thread's side ---------------------------------------------------------
    def _turn(self, trial: int) -> None:
        """Let ``trial`` run until it hands over a training run or ends."""
        self._go[trial].release()
        self._back.acquire()

    def _raise_first_error(self) -> None:
        if self._errors:
            raise self._errors[min(self._errors)]

    def run(self, bodies: list[Callable[[], Any]]) -> list:
        """Run ``bodies[i]`` as trial ``i``; return their results in order."""
        results: list = [None] * self.k
        threads = [threading.Thread(target=self._worker, args=(i, body, results), name=f"lth-trial-{i}", daemon=True)
                   for i, body in enumerate(bodies)]
        for t in threads:
            t.start()
        try:
            while not all(self._done):
                for i in range(self.k):
                    if not self._done[i]:
                        self._turn(i)
                self._raise_first_error()
                jobs = [self._jobs.pop(i) for i in range(self.k) if i in self._jobs]
                if jobs:
                    self._train(jobs)
        except BaseException:
            self._abort = True
            for i in range(self.k):
                if not self._done[i]:
                    self._go[i].release()
            raise
        finally:
            for t in threads:
                t.join()
        return results

    def _train(self, jobs: list[Job]) -> None:
        try:
            train_stacked(jobs, self.mode)
        except ReplicaDiverged as exc:
            # Only that trial diverged: let its own lottery report it (failure.json, message).
            failed = next(j for j in jobs if j.trial == exc.replica)
            failed.error = exc
            self._turn(failed.trial)
            self._raise_first_error()
            raise


def check_recipe(recipe: Recipe) -> None:
    """Refuse, before anything runs, what stacked trials do not support (one line each)."""
    if recipe["callbacks"]:
        names = ", ".join(c["name"] for c in recipe["callbacks"])
        raise LthError(f"vectorize_trials: recipe callbacks ({names}) work on one unstacked model during training; {OFF}")
    if (declared_world(recipe["trainer"]) or 1) > 1 or str(recipe["trainer"].get("strategy", "auto")) != "auto":
        raise LthError(f"vectorize_trials: stacked trials train in one process on one device; {OFF}, or trainer.devices: 1")
    if recipe["tracking"]["backend"] != "none":
        from lth_core.lottery.tracking import resolve_mode

        if resolve_mode(recipe["tracking"]["mode"]) != "disabled":
            raise LthError("vectorize_trials: W&B keeps one active run per process, and the trials run together; "
                           "set tracking: none (or WANDB_MODE=disabled), or vectorize_trials: false")


def run_trials(recipe: Recipe, out_dir: Path, say: Callable[[str], None] = print, pm=None, group: str | None = None) -> tuple[list[dict], list[Path]]:
    """Every trial of ``recipe`` into ``out_dir/trial_<i>/``, trained stacked: (summaries, folders)."""
    check_recipe(recipe)
    n = recipe["trials"]
    folders = [out_dir / f"trial_{i}" for i in range(n)]
    mode = {True: "stacked", "batched": "batched", "parallel": "parallel"}[recipe["vectorize_trials"]]
    how = {"stacked": "", "batched": " (batched matrix products)", "parallel": " (their steps on parallel threads)"}[mode]
    say(f"trials 1..{n} (seeds {recipe['seed']}..{recipe['seed'] + n - 1}) trained stacked as one model{how}")
    lockstep = Lockstep(n, mode)

    def body(i: int) -> Callable[[], dict]:
        def tell(text: str) -> None:
            say(f"[trial {i}] {text}")

        return lambda: run_lottery(recipe.for_trial(i), folders[i], say=tell, pm=pm, group=group, fit=lockstep.fit_for(i))

    return lockstep.run([body(i) for i in range(n)]), folders
