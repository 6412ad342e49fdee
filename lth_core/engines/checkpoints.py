"""Checkpoints inside a training run: a killed round continues from its last checkpoint.

A finished round is a ticket (``ticket.json``) and a rerun reuses it. A round killed half
way would otherwise train again from its start; :class:`RoundCheckpoint` writes, every
``checkpoint_every_n_steps`` steps, everything the rest of the run depends on, and the
next ``lth run`` into the same folder continues from there with the very same numbers
(bit-exact on the CPU): model weights and buffers, the current mask, the optimiser's state,
the step, the evaluation history, every global random-number generator, and the state of
the run's callbacks (``state_dict``/``load_state_dict``, as Lightning defines them).

When: at evaluation steps only (``checkpoint_every_n_steps`` is rounded up to a multiple
of ``trainer.val_check_interval``), so the resumed run evaluates at the same steps; saved
just before the next training step begins, after that evaluation. The learning-rate
schedule needs no state: it is a function of the lottery step, rebuilt at the step resumed.

On disk, in the run's folder (``round_<k>/`` or ``round_<k>/control_<name>/``)::

    checkpoint.json                 step, history, RNG and callback states, the identity of
                                    the run it belongs to, the SHA-256 of the tensors file,
                                    of its state and of the whole record (``record_sha256``)
    checkpoint_<step>.safetensors   model, mask, optimiser and callback tensors, torch RNG

The tensors go first (temporary file, then a rename), then ``checkpoint.json`` (the same),
then older tensors files are removed: whenever the process dies, ``checkpoint.json`` names
a complete file. A damaged checkpoint is one warning naming the file, and the run trains
from its start; the ticket supersedes the checkpoint, which is deleted once ``ticket.json``
exists.

A callback without ``state_dict`` may hold state a checkpoint cannot see: runs with one
write no checkpoints (said once) and restart from their start if interrupted.

Data parallel (W processes, :mod:`lth_core.engines.data_parallel`): every process reaches each
checkpoint step and takes part; only rank 0 writes the files. Weights, mask and optimiser
state, history, extra metrics and callback states are kept once: each process sends a
SHA-256 of each of them and the checkpoint is written only when every process's equal rank
0's (a part that differs turns checkpoints off for the run, said once, rather than hand
another process rank 0's copy). The global generators are kept for every process
(``rng_ranks``, rank order; ``rng`` stays rank 0's) with ``world``. The data order needs
nothing: each process's share of a batch is a function of the step, its rank and W. On
resume rank 0 alone reads and verifies the checkpoint, and its decision (resume or start
over) and the checkpoint's content go to every process, which need not see the folder.
One-process checkpoints are written and read exactly as before.

Trials trained stacked (``vectorize_trials``, :mod:`lth_core.engines.stacked`): each replicate's
checkpoint goes to its own run's folder, in this format and at these steps
(:class:`ReplicaCheckpoints`), so a killed stacked run resumes stacked or one trial after
another; :func:`restore_for_stacking` resumes a run in its trial's thread before it is
handed over, and the stacked fit loads its optimiser state.

A finished run also leaves ``round_state.json`` + ``round_state.safetensors`` beside its
ticket (before ``ticket.json``): the ``context.state`` its callbacks collected for the next
round's criterion (movement scores), so a rerun that reuses the ticket prunes as the
uninterrupted run did.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytorch_lightning as pl
import torch
from safetensors.torch import load_file
from torch import Tensor

from lth_core.engines import collectives
from lth_core.files import atomic_write_tensors, atomic_write_text, json_digest, sha256_file
from lth_core.tickets.mask import Mask

RECORD = "checkpoint.json"
ROUND_STATE = "round_state"
#: The key of ``checkpoint.json`` holding the SHA-256 of all the rest of the record.
SELF = "record_sha256"
FORMAT = 1
#: With ``checkpoint_every_n_steps: null``, about this many checkpoints per training run.
AUTO_PER_RUN = 4
_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"


class StaleCheckpoint(Exception):
    """The checkpoint does not fit this training run after all; it trains from its start."""


# -- plain data <-> JSON + tensors ----------------------------------------------------------

def pack(obj: Any, tensors: dict[str, Tensor]) -> Any:
    """``obj`` as JSON-able data; its tensors move to ``tensors`` (referenced by key).

    Tuples and dicts with non-string keys (an optimiser's ``state`` is keyed by int) are
    tagged so :func:`unpack` gives back the same types; floats keep every bit (JSON repr).
    """
    if isinstance(obj, Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().to("cpu").contiguous().clone()
        return {_TENSOR: key}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, list):
        return [pack(v, tensors) for v in obj]
    if isinstance(obj, tuple):
        return {_TUPLE: [pack(v, tensors) for v in obj]}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: pack(v, tensors) for k, v in obj.items()}
        return {_ITEMS: [[pack(k, tensors), pack(v, tensors)] for k, v in obj.items()]}
    raise TypeError(f"a checkpoint cannot hold a {type(obj).__name__}")


def unpack(obj: Any, tensors: dict[str, Tensor]) -> Any:
    """The inverse of :func:`pack`."""
    if isinstance(obj, list):
        return [unpack(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if set(obj) == {_TENSOR}:
        return tensors[obj[_TENSOR]]
    if set(obj) == {_TUPLE}:
        return tuple(unpack(v, tensors) for v in obj[_TUPLE])
    if set(obj) == {_ITEMS}:
        return {unpack(k, tensors): unpack(v, tensors) for k, v in obj[_ITEMS]}
    return {k: unpack(v, tensors) for k, v in obj.items()}


def fingerprint(obj: Any) -> str:
    """SHA-256 of ``obj`` as :func:`pack` sees it (tensors by dtype, shape and bytes, floats
    by every bit, containers by type and order): equal fingerprints mean equal checkpoint
    content. Raises ``TypeError`` exactly where :func:`pack` does."""
    h = hashlib.sha256()
    _feed(obj, h)
    return h.hexdigest()


def _feed(obj: Any, h: Any) -> None:
    if isinstance(obj, Tensor):
        t = obj.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(obj.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif obj is None or isinstance(obj, (bool, int, float, str)):
        h.update(f"S{json.dumps(obj)}|".encode())
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}|".encode())
        for v in obj:
            _feed(v, h)
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}|".encode())
        for k, v in obj.items():
            _feed(k, h)
            _feed(v, h)
    else:
        raise TypeError(f"a checkpoint cannot hold a {type(obj).__name__}")


def _digest(payload: Any) -> str:
    """The SHA-256 ``checkpoint.json`` keeps of its state and of itself (tickets use the same)."""
    return json_digest(payload)


# -- random-number generators ---------------------------------------------------------------

def rng_state() -> dict:
    """Every global generator a training step may draw from (Lightning seeds these three)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_to_json(state: dict) -> dict:
    """:func:`rng_state` as JSON (to gather every process's generators)."""
    version, internal, gauss = state["python"]
    out = {"torch": state["torch"].tolist(), "python": [version, list(internal), gauss], "numpy": state["numpy"]}
    if "cuda" in state:
        out["cuda"] = [t.tolist() for t in state["cuda"]]
    return out


def rng_from_json(data: dict) -> dict:
    """The inverse of :func:`rng_to_json`: what :func:`rng_state` returned."""
    version, internal, gauss = data["python"]
    state = {"torch": torch.tensor(data["torch"], dtype=torch.uint8), "python": (version, tuple(internal), gauss),
             "numpy": data["numpy"]}
    if "cuda" in data:
        state["cuda"] = [torch.tensor(t, dtype=torch.uint8) for t in data["cuda"]]
    return state


# -- which runs, how often ------------------------------------------------------------------

def identity(recipe_hash: str, round_: int, name: str, mask: Mask, weights: dict[str, Tensor], step: int, optimizer: dict) -> dict:
    """What a checkpoint must match to be resumed: this recipe, round, run and start.

    The start (weights, mask, step, optimiser settings) is fingerprinted, so a checkpoint
    left by a run that started elsewhere (an earlier round was retrained) is never resumed.
    """
    h = hashlib.sha256()
    for part in (weights, dict(mask.items())):
        for n in sorted(part):
            t = part[n].detach().to("cpu").contiguous().reshape(-1)
            h.update(n.encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(json.dumps([step, optimizer], sort_keys=True, default=str).encode())
    return {"recipe_hash": recipe_hash, "round": round_, "run": name, "start_sha256": h.hexdigest()}


def every_n_steps(recipe: Any, steps_per_epoch: int) -> tuple[int, str]:
    """Steps between checkpoints (0: none) and, when none, why.

    ``checkpoint_every_n_steps: null`` (the default) means about :data:`AUTO_PER_RUN` per
    run. Resuming needs a run whose length is ``trainer.max_steps`` and one optimiser step
    per batch; other trainer settings write no checkpoints.
    """
    t = recipe["trainer"]
    max_steps, max_epochs = t.get("max_steps", -1) or -1, t.get("max_epochs", -1)
    if max_steps <= 0:
        return 0, "training is not limited by trainer.max_steps"
    if max_epochs not in (None, -1) and max_epochs * steps_per_epoch < max_steps:
        return 0, "trainer.max_epochs ends training before trainer.max_steps"
    if t.get("accumulate_grad_batches") not in (None, 1):
        return 0, "trainer.accumulate_grad_batches is set"
    limit = t.get("limit_train_batches")
    if limit is not None and not (isinstance(limit, float) and limit == 1.0):  # an int counts batches
        return 0, "trainer.limit_train_batches is set"
    n = recipe.data.get("checkpoint_every_n_steps")
    if n is None:
        return max(1, math.ceil(max_steps / AUTO_PER_RUN)), ""
    return n, ""


# -- files ----------------------------------------------------------------------------------

@dataclass
class Saved:
    """A checkpoint read back and verified."""

    path: Path
    step: int
    state: dict


def discard(folder: Path) -> None:
    """Remove the folder's checkpoint files (the ticket supersedes them)."""
    folder = Path(folder)
    (folder / RECORD).unlink(missing_ok=True)
    for p in list(folder.glob("checkpoint_*.safetensors")) + list(folder.glob(".checkpoint*")):
        p.unlink(missing_ok=True)


def write(folder: Path, step: int, state: dict) -> Path:
    """Write a checkpoint atomically: tensors file, then ``checkpoint.json``, then cleanup."""
    tensors: dict[str, Tensor] = {}
    payload = pack(state, tensors)
    name = f"checkpoint_{step}.safetensors"
    atomic_write_tensors(folder / name, tensors)
    record = {"format": FORMAT, "step": step, "tensors": name, "sha256": sha256_file(folder / name),
              "state_sha256": _digest(payload), "state": payload}
    record[SELF] = _digest(record)
    atomic_write_text(folder / RECORD, json.dumps(record))
    for p in folder.glob("checkpoint_*.safetensors"):
        if p.name != name:
            p.unlink(missing_ok=True)
    return folder / RECORD


def read(folder: Path) -> Saved | None:
    """The folder's checkpoint, verified; ``None`` when it has none. Damage raises
    ``ValueError`` naming the damaged file."""
    path = Path(folder) / RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is truncated or not JSON ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("state"), dict):
        raise ValueError(f"{path} is not an lth checkpoint record (format {FORMAT})")
    if _digest(record["state"]) != record.get("state_sha256") or not _record_intact(record):
        raise ValueError(f"{path} does not match its own checksum: the file was altered")
    tensors_path = path.parent / str(record.get("tensors"))
    if not tensors_path.is_file():
        raise ValueError(f"{tensors_path}, named by {path}, is missing")
    if sha256_file(tensors_path) != record.get("sha256"):
        raise ValueError(f"{tensors_path} does not match its checksum in {path}: the file is truncated or altered")
    try:
        tensors = load_file(str(tensors_path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types
        raise ValueError(f"{tensors_path} is not a readable safetensors file: {exc}") from None
    return Saved(path, int(record["step"]), unpack(record["state"], tensors))


def _record_intact(record: dict) -> bool:
    """The whole record (step, tensors file and its SHA-256 too, not only the state) is as
    written; records from before :data:`SELF` existed carry only ``state_sha256``."""
    return SELF not in record or _digest({k: v for k, v in record.items() if k != SELF}) == record[SELF]


def load(folder: Path, expected: dict, say: Callable[[str], None]) -> Saved | None:
    """The checkpoint to resume from, or ``None`` (train from the start).

    Never raises: a damaged checkpoint, or one left by another start of this run, is one
    warning naming the file; it is removed and the run trains from its start.
    """
    where = f"round {expected['round']} [{expected['run']}]"
    try:
        saved = read(folder)
    except ValueError as exc:
        say(f"warning: {exc}; {where} trains from its start")
        discard(folder)
        return None
    if saved is None:
        return None
    if saved.state.get("identity") != expected:
        say(f"warning: {saved.path} was written by another start of this run (an earlier round changed); {where} trains from its start")
        discard(folder)
        return None
    world, written = collectives.world_size(), saved.state.get("world", 1)
    if written != world or (world > 1 and len(saved.state.get("rng_ranks") or ()) != world):
        say(f"warning: {saved.path} was written by {written} processes, this run has {world}; {where} trains from its start")
        discard(folder)
        return None
    return saved


def load_from_rank_zero(folder: Path, expected: dict, say: Callable[[str], None]) -> Saved | None:
    """:func:`load` for every process of a data-parallel run: rank 0 alone reads and
    verifies the folder's checkpoint; its decision (resume or start over) and the
    checkpoint's content go to every process, which need not see the folder."""
    if collectives.world_size() == 1:
        return load(folder, expected, say)
    mine = load(folder, expected, say) if collectives.rank() == 0 else None
    tensors: dict[str, Tensor] = {}
    head = collectives.broadcast_json({"path": str(mine.path), "step": mine.step, "state": pack(mine.state, tensors)} if mine else None)
    if head is None:  # every process: train from the start
        return None
    got = collectives.broadcast_tensors(tensors if mine else None)
    return Saved(Path(head["path"]), int(head["step"]), unpack(head["state"], got))


# -- what a finished run hands the next round ----------------------------------------------

def save_round_state(folder: Path, state: dict) -> None:
    """Keep ``context.state`` beside the ticket, written before ``ticket.json``.

    The next round's criterion reads it (movement scores): a rerun that reuses the ticket
    then prunes as the uninterrupted run did. State that is not plain data and tensors is
    not kept (such a rerun gets none, as before this file existed).
    """
    if not state:
        return
    tensors: dict[str, Tensor] = {}
    try:
        payload = pack(state, tensors)
    except TypeError:
        return
    atomic_write_tensors(folder / f"{ROUND_STATE}.safetensors", tensors)
    record = {"sha256": sha256_file(folder / f"{ROUND_STATE}.safetensors"), "state_sha256": _digest(payload), "state": payload}
    atomic_write_text(folder / f"{ROUND_STATE}.json", json.dumps(record))


def load_round_state(folder: Path, say: Callable[[str], None]) -> dict:
    """The state a reused ticket's run handed on; ``{}`` when none was kept or it is damaged."""
    path, tensors_path = Path(folder) / f"{ROUND_STATE}.json", Path(folder) / f"{ROUND_STATE}.safetensors"
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
        if _digest(record["state"]) != record["state_sha256"]:
            raise ValueError(f"{path} does not match its own checksum")
        if not tensors_path.is_file() or sha256_file(tensors_path) != record["sha256"]:
            raise ValueError(f"{tensors_path} is missing or does not match its checksum in {path}")
        return unpack(record["state"], load_file(str(tensors_path)))
    except Exception as exc:  # noqa: BLE001 - any damage means: no state
        say(f"warning: {exc if isinstance(exc, ValueError) else f'{path} is unreadable ({exc})'}; the next round gets no state from {folder}")
        return {}


# -- the callback ---------------------------------------------------------------------------

def keeps_state(callback: pl.Callback) -> bool:
    """A callback that defines ``state_dict`` says what it must get back to resume."""
    return type(callback).state_dict is not pl.Callback.state_dict


_said: set[tuple[str, str]] = set()


def say_off(expected: dict, why: str, say: Callable[[str], None]) -> None:
    """Say once per recipe and reason that a run writes no checkpoints, and what that means."""
    key = (expected["recipe_hash"], why)
    if key not in _said:
        _said.add(key)
        say(f"round {expected['round']} [{expected['run']}]: no checkpoints inside this run: {why}; "
            "if interrupted it trains again from its start")


def interval(every: int, trainer: pl.Trainer, pl_module: pl.LightningModule) -> int:
    """Steps between checkpoints (0: none): ``every`` rounded up to a multiple of the steps
    between evaluations, so a resumed run evaluates at the uninterrupted run's steps."""
    vcb = trainer.val_check_batch * getattr(pl_module, "steps_per_call", 1)  # Lightning counts calls; this counts steps
    return math.ceil(every / vcb) * vcb if every and math.isfinite(vcb) else 0


class RoundCheckpoint(pl.Callback):
    """Writes this run's checkpoints; in a resumed run, restores the checkpoint first.

    It reads and restores the run through ``context.module`` (the lottery's view of the
    run: a :class:`lth_core.LotteryModule`, or the view of a user's own module), never
    through the LightningModule Lightning hands its hooks.

    It runs before every other callback (:func:`attach`). The restore happens at the first
    training batch, after every callback's ``on_train_start`` has seen the run's start as
    the uninterrupted run did; then model, mask, optimiser, history, callback states
    (``load_state_dict``) and RNGs jump to the checkpoint's step.
    """

    multi_step_safe = True  # it acts at the start of a Lightning call only, and counts steps

    def __init__(self, context: Any, expected: dict, start_step: int, every: tuple[int, str], saved: Saved | None,
                 origins: dict[int, str], extra: tuple, say: Callable[[str], None]):
        self.context, self.expected, self.start_step = context, expected, start_step
        self.every, self.reason = every
        self.saved, self.origins, self.extra, self.say = saved, origins, extra, say
        self.interval = 0
        self.tracked: list[pl.Callback] = []

    def _where(self) -> str:
        return f"round {self.expected['round']} [{self.expected['run']}]"

    def _off(self, why: str) -> None:
        say_off(self.expected, why, self.say)
        self.interval = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.tracked = [cb for cb in trainer.callbacks if id(cb) in self.origins or any(cb is e for e in self.extra)]
        blind = [cb for cb in self.tracked if not keeps_state(cb)]
        self.interval = interval(self.every, trainer, self.context.module)
        if blind:
            cb = blind[0]
            self._off(f"{self.origins.get(id(cb), 'a callback')} ({type(cb).__name__}) defines no state_dict")
        elif self.reason:
            self._off(self.reason)
        if self.saved is not None and blind:
            raise StaleCheckpoint(f"{self.saved.path} cannot be resumed: {type(blind[0]).__name__} keeps no checkpoint state")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.saved is not None:
            self._restore(trainer, self.context.module, self.saved)
            self.saved = None
            return
        step = self.context.module.step
        if self.interval and step > self.start_step and (step - self.start_step) % self.interval == 0:
            self._save(trainer, self.context.module, step)

    def _save(self, trainer: pl.Trainer, run: Any, step: int) -> None:
        state = {
            "identity": self.expected,
            "step": step,
            "history": run.history,
            "metrics": dict(self.context.metrics),
            "model": run.model.state_dict(),
            "mask": dict(run.mask.items()),
            "optimizers": [opt.state_dict() for opt in trainer.optimizers],
            "callbacks": [[type(cb).__qualname__, cb.state_dict()] for cb in self.tracked],
            "rng": rng_state(),
        }
        if collectives.world_size() > 1:
            if self._agreed(state, step) and collectives.is_writer():
                write(Path(self.context.out_dir), step, state)
            return
        try:
            write(Path(self.context.out_dir), step, state)
        except TypeError as exc:  # a callback's state_dict holds something else than data and tensors
            culprit = next((cb for cb in self.tracked if not _packable(cb.state_dict())), None)
            who = f"{self.origins.get(id(culprit), 'a callback')} ({type(culprit).__name__})" if culprit else "this run"
            self._off(f"the state_dict of {who} is not plain data and tensors ({exc})")

    def _agreed(self, state: dict, step: int) -> bool:
        """Data parallel: every process sends its generators and a fingerprint of each other
        part of ``state``; True (``state`` then holds ``world`` and every process's
        generators) when each part is rank 0's on every process. Every process gets the same
        answers, so all write (rank 0) or turn checkpoints off together."""
        parts = {"model weights": state["model"], "mask": state["mask"], "optimiser state": state["optimizers"],
                 "evaluation history": state["history"], "extra metrics": state["metrics"]}
        for cb, (_, cb_state) in zip(self.tracked, state["callbacks"]):
            parts[f"state of {self.origins.get(id(cb), 'a callback')} ({type(cb).__name__})"] = cb_state
        mine: dict[str, Any] = {"rng": rng_to_json(state["rng"]), "parts": {}, "problem": None}
        for what, value in parts.items():
            try:
                mine["parts"][what] = fingerprint(value)
            except TypeError as exc:
                mine["problem"] = f"the {what} is not plain data and tensors ({exc})"
                break
        ranks = collectives.all_gather_json(mine)
        problem = next((r["problem"] for r in ranks if r["problem"]), None)
        if problem:
            self._off(problem)
            return False
        for r, theirs in enumerate(ranks):
            odd = next((what for what in parts if theirs["parts"][what] != ranks[0]["parts"][what]), None)
            if odd:
                self._off(f"at step {step} process {r} holds another {odd} than rank 0, and a checkpoint keeps one copy")
                return False
        state["world"] = len(ranks)
        state["rng_ranks"] = [rng_from_json(r["rng"]) for r in ranks]
        return True

    def _restore(self, trainer: pl.Trainer, run: Any, saved: Saved) -> None:
        s = saved.state
        names = [type(cb).__qualname__ for cb in self.tracked]
        if run.step != saved.step or names != [n for n, _ in s["callbacks"]] or len(s["optimizers"]) != len(trainer.optimizers):
            raise StaleCheckpoint(f"{saved.path} does not fit this run (step {saved.step}, callbacks {[n for n, _ in s['callbacks']]})")
        try:
            run.model.load_state_dict(s["model"])
        except RuntimeError as exc:  # another model layout (a callback that wraps layers differently)
            raise StaleCheckpoint(f"{saved.path} holds another model's weights ({str(exc).splitlines()[0]})") from None
        run.set_mask(Mask(s["mask"]))
        for opt, opt_state in zip(trainer.optimizers, s["optimizers"]):
            opt.load_state_dict(opt_state)
        run.history = list(s["history"])
        self.context.metrics.update(s["metrics"])
        for cb, (_, cb_state) in zip(self.tracked, s["callbacks"]):
            cb.load_state_dict(cb_state)
        set_rng_state(s["rng_ranks"][collectives.rank()] if "rng_ranks" in s else s["rng"])  # data parallel: each its own
        self.say(f"{self._where()}: resumed at step {saved.step} from {saved.path}")


# -- trials trained stacked (vectorize_trials) ---------------------------------------------

@dataclass
class ReplicaKeep:
    """What one trial's training run hands to a stacked fit so that its replicate writes
    the run's checkpoints (:class:`ReplicaCheckpoints`) as the run trained alone would."""

    folder: Path
    expected: dict  #: the run's identity (:func:`identity`)
    round_start: int  #: the run's first step: checkpoints count from it, as :class:`RoundCheckpoint`'s do
    every: int  #: steps between checkpoints before rounding (:func:`every_n_steps`; 0: none)
    reason: str  #: why none, when none
    mask: dict[str, Tensor]
    metrics: dict  #: the run's ``context.metrics``
    rng: dict  #: every global generator when the trial handed the run over (:func:`rng_state`)
    say: Callable[[str], None]
    optimizer_state: dict | None = None  #: resumed: the optimiser's ``state_dict`` at the checkpoint


def restore_for_stacking(saved: Saved, module: Any, context: Any) -> dict:
    """Resume a run that trains stacked: in the trial's own thread, before it hands the run
    over, its model, history, extra metrics and global generators jump to the checkpoint's
    step. Returns the optimiser's state, which the stacked fit loads into its optimiser.

    Stacked runs have no callbacks (``vectorize_trials`` refuses them), so their mask is
    the run's start mask and there are no callback states: a checkpoint with either other
    is stale."""
    s = saved.state
    mask_changed = set(s["mask"]) != set(context.mask) or any(not torch.equal(s["mask"][n], context.mask[n]) for n in s["mask"])
    if s["callbacks"] or len(s["optimizers"]) != 1 or mask_changed:
        raise StaleCheckpoint(f"{saved.path} holds callback states or a changed mask, which stacked trials cannot resume")
    module.model.load_state_dict(s["model"])
    module.history = list(s["history"])
    context.metrics.update(s["metrics"])
    set_rng_state(s["rng"])
    return s["optimizers"][0]


class ReplicaCheckpoints(pl.Callback):
    """Checkpoints of K runs trained as one stacked model (:mod:`lth_core.engines.stacked`).

    Each replicate's checkpoint goes to its own run's folder, at the steps and in the
    format that run trained alone writes (:class:`RoundCheckpoint`): a killed stacked run
    resumes where it was, stacked again or one trial after another. The stacked module
    gives each replicate's parts in its own run's terms (``replica_state``,
    ``replica_optimizer_state``, ``replica_rng``, ``histories``). A kill between two
    replicates' files leaves their runs at different steps; they then resume in two fits.
    """

    multi_step_safe = True  # it acts at the start of a Lightning call only, and counts steps

    def __init__(self, keeps: list[ReplicaKeep]):
        self.keeps = keeps
        self.intervals = [0] * len(keeps)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.intervals = [interval(keep.every, trainer, pl_module) for keep in self.keeps]
        for keep in self.keeps:
            if keep.reason:
                say_off(keep.expected, keep.reason, keep.say)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        step = pl_module.step
        for i, (keep, every) in enumerate(zip(self.keeps, self.intervals)):
            if every and step > keep.round_start and (step - keep.round_start) % every == 0:
                write(Path(keep.folder), step, {
                    "identity": keep.expected,
                    "step": step,
                    "history": pl_module.histories[i],
                    "metrics": dict(keep.metrics),
                    "model": pl_module.replica_state(i),
                    "mask": keep.mask,
                    "optimizers": [pl_module.replica_optimizer_state(i)],
                    "callbacks": [],
                    "rng": dict(keep.rng, torch=pl_module.replica_rng(i, keep.rng["torch"])),
                })


def _packable(obj: Any) -> bool:
    try:
        pack(obj, {})
    except TypeError:
        return False
    return True


def attach(trainer: pl.Trainer, keeper: RoundCheckpoint) -> None:
    """Put ``keeper`` before every other callback: it saves, and restores, before they act."""
    trainer.callbacks.insert(0, keeper)
