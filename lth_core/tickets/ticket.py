"""Tickets: a mask, the weights it rewinds to, the weights it trained to, and metadata.

On disk a ticket is a folder::

    mask.safetensors      bool masks by parameter name
    init.safetensors      the state dict the round trained from (θ0 for rewind-to-init)
    final.safetensors     the state dict after training (pruned weights exactly zero)
    ticket.json           metadata: round, weights_remaining, metrics, recipe_hash, seed,
                          per-layer sparsity, model, sha256 of each tensor file and
                          (``ticket_sha256``) of its own content

Tensors use safetensors (no pickle) and are saved from CPU, so tickets move between
devices. ``ticket.json`` is written last, via a temporary file and a rename: a folder
without it is an unfinished round. Loading verifies checksums, names and shapes, and
refuses a ticket.json that records no checksum for a tensor file; tickets written before
``ticket_sha256`` existed load without that one check.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from lth_core.errors import LthError
from lth_core.files import atomic_write_tensors, atomic_write_text, json_digest, make_dir, read_json, sha256_file
from lth_core.tickets.mask import Mask, check_mask_fits

FILES = ("mask", "init", "final")
#: The key of ticket.json that holds the SHA-256 of the rest of its content.
SELF = "ticket_sha256"


@dataclass
class Ticket:
    mask: Mask
    init: dict[str, Tensor]
    final: dict[str, Tensor] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def weights_remaining(self) -> float:
        return self.mask.density()

    def check_fits(self, model: nn.Module, source: str = "ticket") -> None:
        """Refuse a ticket made for another architecture, naming the first difference."""
        check_mask_fits(self.mask, model, source)
        own = model.state_dict()
        for which in ("init", "final"):
            tensors = getattr(self, which)
            if tensors is None:
                continue
            if set(tensors) != set(own):
                diff = sorted(set(tensors) ^ set(own))[:5]
                raise LthError(f"{source} {which} weights do not fit this model: differing names {diff}")
            for n, t in tensors.items():
                if tuple(t.shape) != tuple(own[n].shape):
                    raise LthError(
                        f"{source} {which} weights do not fit this model: {n} is {tuple(t.shape)}, model has {tuple(own[n].shape)}"
                    )


def save_ticket(ticket: Ticket, folder: str | os.PathLike) -> Path:
    """Write the tensors (each via a temporary file and a rename), then ``ticket.json``.

    ``ticket.json`` records the SHA-256 of each tensor file and of its own content
    (``ticket_sha256``), so any later change to any file of the ticket is detected.
    """
    folder = Path(folder)
    make_dir(folder)
    tensors = {"mask": dict(ticket.mask.items()), "init": ticket.init}
    if ticket.final is not None:
        tensors["final"] = ticket.final
    sums = {}
    for which, state in tensors.items():
        path = folder / f"{which}.safetensors"
        atomic_write_tensors(path, state)
        sums[which] = sha256_file(path)
    meta = {k: v for k, v in ticket.meta.items() if k != SELF}
    meta["weights_remaining"] = ticket.mask.density()
    meta["sparsity"] = ticket.mask.report()
    meta["sha256"] = sums
    meta[SELF] = json_digest(meta)
    ticket.meta = meta
    atomic_write_text(folder / "ticket.json", json.dumps(meta, indent=2, sort_keys=True))
    return folder


def is_ticket(folder: str | os.PathLike) -> bool:
    """Does ``folder`` hold a finished ticket (its ``ticket.json``, written last)?"""
    return (Path(folder) / "ticket.json").is_file()


def require_ticket(folder: str | os.PathLike) -> None:
    """Fail early, before any data loads, when a command is given a folder that is not a ticket."""
    if not is_ticket(folder):
        raise LthError(f"{folder} is not a ticket folder (no ticket.json); give a folder such as RUN/round_3")


def _again(folder: Path) -> str:
    """How to get a sound ticket back: a rerun trains a round whose ticket.json is gone."""
    return f"delete {folder / 'ticket.json'} and rerun the same `lth run` to train that round again"


def _read_meta(folder: Path) -> dict:
    """``ticket.json``, verified against its own checksum when it has one (tickets written
    before lth recorded it have none and still load)."""
    path = folder / "ticket.json"
    if not path.is_file():
        raise LthError(f"{folder} is not a ticket: no ticket.json (an unfinished round, or the wrong folder)")
    try:
        meta = read_json(path)
    except LthError as exc:
        raise LthError(f"{exc}; {_again(folder)}") from None
    if SELF in meta and json_digest({k: v for k, v in meta.items() if k != SELF}) != meta[SELF]:
        raise LthError(f"{path} does not match its own checksum: the file was altered; {_again(folder)}")
    return meta


def _tensor_files(folder: Path, meta: dict) -> dict[str, str]:
    """Which tensor files the ticket has, with their recorded SHA-256.

    ``mask`` and ``init`` always; ``final`` when ticket.json records it or the file exists.
    A file without a recorded checksum cannot be verified, so it is refused, as is a
    recorded file that is missing (never a ticket silently without its trained weights).
    """
    sums = meta.get("sha256")
    if not isinstance(sums, dict):
        raise LthError(f"{folder / 'ticket.json'} records no sha256 of the ticket's tensor files, so they cannot be verified; {_again(folder)}")
    found = {}
    for which in FILES:
        path = folder / f"{which}.safetensors"
        if which == "final" and "final" not in sums and not path.exists():
            continue  # a ticket saved without trained weights
        if not isinstance(sums.get(which), str):
            raise LthError(f"{folder / 'ticket.json'} records no sha256 for {path.name}, so it cannot be verified; {_again(folder)}")
        if not path.is_file():
            raise LthError(f"ticket {folder} is missing {path.name} (ticket.json lists it); {_again(folder)}")
        found[which] = sums[which]
    return found


def _read_tensors(path: Path, expected: str, folder: Path) -> dict[str, Tensor]:
    """A tensor file whose checksum matches, parsed as safetensors only (never pickle)."""
    if sha256_file(path) != expected:
        raise LthError(f"{path} does not match its checksum in ticket.json: the file is truncated or altered; {_again(folder)}")
    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types
        why = " ".join(str(exc).split())
        raise LthError(f"{path} is not a readable safetensors file ({why}); {_again(folder)}") from None


def load_ticket(folder: str | os.PathLike, model: nn.Module | None = None) -> Ticket:
    """Load a ticket folder, verifying checksums; with ``model``, also names and shapes.

    Every kind of damage is one LthError naming the file and how to train the round again.
    """
    folder = Path(folder)
    meta = _read_meta(folder)
    parts = {which: _read_tensors(folder / f"{which}.safetensors", sha, folder) for which, sha in _tensor_files(folder, meta).items()}
    bad = [n for n, t in parts["mask"].items() if t.dtype != torch.bool]
    if bad:
        raise LthError(f"{folder}/mask.safetensors holds non-bool masks: {bad}")
    ticket = Ticket(Mask(parts["mask"]), parts["init"], parts.get("final"), meta)
    if model is not None:
        ticket.check_fits(model, source=f"ticket {folder}")
    return ticket
