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

Why not ``torch.func``: ``vmap(functional_call)`` over the replicates' stacked parameters
would replace the stacked model, not these threads, which exist because each trial's
lottery (pruning, rewinding, checkpoints, its files) is ordinary sequential code that
must run exactly as alone. And it cannot keep the stacked model's promises: it computes
each layer as one batched product, as ``batched`` does, so ``true`` and ``parallel`` would
no longer be bit for bit the sequential run (LeNet-300-100, K=4, 60 Adam steps: its weights
ended 1.3e-3 from the sequential run's, ``batched``'s 5e-6); dropout under ``vmap`` draws
one mask for all replicates or a stream that is no sequential run's; and it was slower
(0.68x the sequential run on one thread, ``batched`` 1.13x; ``python
benchmarks/torch_func.py --threads 1``).
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import torch

from lth_core.engines import checkpoints
from lth_core.engines.base import Engine, Fit
from lth_core.engines.checkpoints import ReplicaKeep
from lth_core.engines.stacked import Job, ReplicaDiverged, train_stacked


class _Abandoned(BaseException):
    """Unwinds a waiting trial when another one failed (never caught by ``except Exception``)."""


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
    def engine(self, trial: int) -> "Stacked":
        """Trial ``trial``'s engine: its training runs are handed over to train stacked."""
        return Stacked(self, trial)

    def hand_over(self, job: Job) -> None:
        """Called in a trial's thread: wait until the main thread has trained ``job``."""
        self._jobs[job.trial] = job
        self._park(job.trial)
        torch.set_rng_state(job.rng)  # what training drew (dropout) is drawn in this trial
        if job.error is not None:
            raise job.error

    def _park(self, trial: int) -> None:
        state = checkpoints.rng_state()
        self._back.release()
        self._go[trial].acquire()
        if self._abort:
            raise _Abandoned()
        checkpoints.set_rng_state(state)

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


class Stacked(Engine):
    """The engine of one trial whose runs train stacked beside the other trials' (see the
    module docstring): instead of fitting, a run is handed to the :class:`Lockstep`.

    Its checkpoints go to its own folder in the one-run format, written by the stacked
    fit (:class:`lth_core.engines.checkpoints.ReplicaCheckpoints`); a resumed run first
    jumps to its checkpoint here, in the trial's thread.
    """

    def __init__(self, lockstep: Lockstep, trial: int):
        self.lockstep, self.trial = lockstep, trial

    def fit(self, fit: Fit) -> None:
        self.lockstep.hand_over(Job(self.trial, fit.run, fit.module, fit.trainer, fit.first_step, keep=self._keep(fit)))

    def _keep(self, fit: Fit) -> ReplicaKeep:
        """What the run's replicate needs to write this run's checkpoints, resumed from
        ``fit.saved`` (in this trial's thread) when there is one."""
        ctx, optimizer_state = fit.context, None
        if fit.saved is not None:
            optimizer_state = checkpoints.restore_for_stacking(fit.saved, fit.module, ctx)
            fit.run.say(f"round {ctx.round} [{ctx.name}]: resumed at step {fit.saved.step} from {fit.saved.path}")
        every, reason = checkpoints.every_n_steps(fit.run.recipe, len(fit.run.data.train_loader(0)))
        return ReplicaKeep(ctx.out_dir, fit.identity, fit.start_step, every, reason, dict(ctx.mask.items()), ctx.metrics,
                           checkpoints.rng_state(), fit.run.say, optimizer_state)
