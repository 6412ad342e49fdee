"""A network shared by several tasks: its weights, who owns each weight, each task's units.

PackNet (Mallya & Lazebnik 2018) as plain data. Every prunable weight has an owner: ``0``
is free (pruned away, exactly zero), ``t >= 1`` is the task that trained it (task 1 = the
original ticket's kept weights). Task ``t`` has output units ``[start, end)`` of one shared
head and is evaluated with only the weights owned by tasks ``1..t`` (its *view*): weights
that later tasks trained never reach it, so its logits never change.

On disk an extension folder is a ticket folder (``mask``/``init``/``final`` safetensors and
``ticket.json``, written by :func:`lth_core.tickets.ticket.save_ticket`; the mask is "owned by any
task") plus ``ownership.safetensors`` (int16 owner per prunable weight) and ``extend.json``
(the tasks and the measurements), written last.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from lth_core import Allocation, LthError, Mask, Ticket, atomic_write_tensors, atomic_write_text, is_ticket, load_ticket, prune_by_scores, read_json, read_yaml, save_ticket, sha256_file

from lth_frankenmodel.report import EXTEND_JSON  # noqa: F401 - defined with the report, which is torch-free

OWNERSHIP_FILE = "ownership.safetensors"
OWNER_DTYPE = torch.int16


@dataclass
class Packed:
    """Weights of one network plus the per-weight owner and the tasks sharing it.

    ``state`` is the trained state dict; ``init`` the weights a free position starts from
    when a later task trains it (θ0 of the original ticket); ``owner`` maps every prunable
    parameter to an int16 tensor; ``tasks[t - 1]`` is task ``t``: ``{"classes", "units"}``.
    """

    model: dict
    data: str
    state: dict[str, Tensor]
    init: dict[str, Tensor]
    owner: dict[str, Tensor]
    tasks: list[dict]
    heads: list[str]  # parameters/buffers whose first dimension is the number of output units

    @property
    def classes(self) -> list[int]:
        """Every task's classes in output-unit order (the data set's labels)."""
        return [c for t in self.tasks for c in t["classes"]]

    @property
    def units(self) -> int:
        return self.tasks[-1]["units"][1]

    def owned_by(self, first: int, last: int | None = None) -> Mask:
        """The weights owned by tasks ``first..last`` (``last`` defaults to ``first``)."""
        last = first if last is None else last
        return Mask({n: (o >= first) & (o <= last) for n, o in self.owner.items()})

    def counts(self) -> dict[str, int]:
        """Prunable weights per owner: ``free``, ``task_1``, ``task_2``, ... and ``total``."""
        out = {"free": sum(int((o == 0).sum()) for o in self.owner.values())}
        for t in range(1, len(self.tasks) + 1):
            out[f"task_{t}"] = sum(int((o == t).sum()) for o in self.owner.values())
        out["total"] = sum(o.numel() for o in self.owner.values())
        return out

    def view(self, task: int) -> dict[str, Tensor]:
        """The state dict of task ``task``'s network: weights of tasks ``1..task`` only, and
        the output units up to that task's last (later units' rows are cut off)."""
        end = self.tasks[task - 1]["units"][1]
        out = {}
        for n, t in self.state.items():
            if n in self.owner:
                o = self.owner[n]
                t = torch.where((o > 0) & (o <= task), t, torch.zeros((), dtype=t.dtype))
            if n in self.heads:
                t = t[:end]
            out[n] = t.clone()
        return out


def grow(packed: Packed, classes: list[int], fresh: dict[str, Tensor], params: set[str]) -> tuple[Packed, dict[str, Tensor]]:
    """Add a task with new output units for ``classes``; return its start network and what may train.

    ``fresh`` is the state dict of a new model with the grown head (its new rows start the
    new units). Every weight some task owns keeps its trained value and is frozen; a free
    weight starts from its initial value (θ0 of the ticket, as a lottery would rewind it)
    and may train; of the other parameters only the new units' entries (output biases) may.
    """
    old, new = packed.units, len(classes)
    state, init, owner, trainable = {}, {}, {}, {}
    for n, f in fresh.items():
        s, i = packed.state[n], packed.init[n]
        if n in packed.heads:
            if f.shape[0] != old + new or f.shape[1:] != s.shape[1:]:
                raise LthError(f"output layer {n} of model {packed.model.get('name')!r} has shape {tuple(f.shape)}, expected {old + new} units")
            s, i = torch.cat([s, f[old:]]), torch.cat([i, f[old:]])
        elif s.shape != f.shape:
            raise LthError(f"model {packed.model.get('name')!r} changes {n} with the number of classes; only the output layer may")
        if n in packed.owner:
            o = packed.owner[n]
            if n in packed.heads:
                o = torch.cat([o, torch.zeros((new, *o.shape[1:]), dtype=OWNER_DTYPE)])
            owner[n] = o
            trainable[n] = o == 0
            s = torch.where(o == 0, i, s)
        elif n in params:
            trainable[n] = torch.zeros_like(s, dtype=torch.bool)
            if n in packed.heads:
                trainable[n][old:] = True  # the new units' biases
        state[n], init[n] = s.clone(), i.clone()
    task = {"task": len(packed.tasks) + 1, "classes": list(classes), "units": [old, old + new]}
    return Packed(packed.model, packed.data, state, init, owner, [*packed.tasks, task], list(packed.heads)), trainable


def claim(start: Packed, trained: dict[str, Tensor], prune: float) -> Packed:
    """After the newest task trained: it owns every free weight; with ``prune`` > 0 it then
    gives back that fraction of them (lowest magnitude per layer, as PackNet), zeroed and
    free again for a later task."""
    task = len(start.tasks)
    owner = {n: torch.where(o == 0, torch.tensor(task, dtype=OWNER_DTYPE), o) for n, o in start.owner.items()}
    state = {n: t.detach().cpu().clone() for n, t in trained.items()}
    if prune > 0:
        mine = Mask({n: o == task for n, o in owner.items()})
        kept = prune_by_scores({n: state[n].abs() for n in mine}, mine, Allocation({n: prune for n in mine}))
        for n in mine:
            drop = mine[n] & ~kept[n]
            owner[n][drop] = 0
            state[n][drop] = 0.0
    return Packed(start.model, start.data, state, start.init, owner, start.tasks, start.heads)


def _run_recipe(folder: Path) -> dict:
    """The recipe of the run a ticket folder belongs to (``RUN/round_K`` or a control inside it)."""
    for parent in (folder.parent, folder.parent.parent):
        path = parent / "recipe.yaml"
        if path.is_file():
            return read_yaml(path) or {}
    raise LthError(f"{folder} has no recipe.yaml in its run folder: cannot tell which classes the ticket was trained on")


def from_ticket(folder: Path, heads: list[str]) -> Packed:
    """A lottery ticket as the first task: its kept weights are owned by task 1."""
    ticket = load_ticket(folder)
    if ticket.final is None:
        raise LthError(f"ticket {folder} has no trained weights (final.safetensors)")
    classes = (_run_recipe(folder).get("data") or {}).get("classes")
    if not classes:
        raise LthError(
            f"ticket {folder} was trained on every class of its data set, so no class is left to add; "
            "train the ticket on some classes first (--set 'data.classes=[0,1,2,3,4]')"
        )
    owner = {n: m.to(OWNER_DTYPE) for n, m in ticket.mask.items()}
    task = {"task": 1, "classes": list(classes), "units": [0, len(classes)]}
    return Packed(dict(ticket.meta["model"]), ticket.meta["data"], ticket.final, ticket.init, owner, [task], list(heads))


def from_extension(folder: Path) -> Packed:
    """An ``lth extend`` output folder, its ownership checked against its mask and checksum."""
    record = read_json(folder / EXTEND_JSON)
    ticket = load_ticket(folder)
    path = folder / OWNERSHIP_FILE
    if not path.is_file() or sha256_file(path) != record.get("ownership_sha256"):
        raise LthError(f"{path} is missing or does not match its checksum in {EXTEND_JSON}")
    owner = load_file(str(path))
    if set(owner) != set(ticket.mask) or any(not torch.equal(owner[n] > 0, ticket.mask[n]) for n in owner):
        raise LthError(f"{path} does not agree with {folder}/mask.safetensors")
    return Packed(record["model"], record["data"], ticket.final, ticket.init, owner, record["tasks"], record["heads"])


def load_source(folder: Path, heads_for) -> tuple[Packed, str]:
    """A ticket folder or an extension folder; ``heads_for(model_spec, units)`` names the head."""
    folder = Path(folder)
    if (folder / EXTEND_JSON).is_file():
        return from_extension(folder), "extension"
    if is_ticket(folder):
        meta = read_json(folder / "ticket.json")
        classes = (_run_recipe(folder).get("data") or {}).get("classes") or []
        return from_ticket(folder, heads_for(meta.get("model", {}), max(len(classes), 2))), "ticket"
    raise LthError(f"{folder} is neither a ticket folder (RUN/round_K with ticket.json) nor an `lth extend` output folder")


def save_packed(packed: Packed, folder: Path, meta: dict, record: dict) -> Path:
    """Write the extended network as a ticket, its ownership, then ``extend.json`` last."""
    mask = Mask({n: o > 0 for n, o in packed.owner.items()})
    save_ticket(Ticket(mask, packed.init, packed.state, meta), folder)
    path = folder / OWNERSHIP_FILE
    atomic_write_tensors(path, packed.owner)
    record = {**record, "model": packed.model, "data": packed.data, "tasks": packed.tasks, "heads": packed.heads,
              "ownership_sha256": sha256_file(path)}
    atomic_write_text(folder / EXTEND_JSON, json.dumps(record, indent=2))
    return folder / EXTEND_JSON
