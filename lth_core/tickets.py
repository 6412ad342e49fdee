"""Tickets: a mask, the weights it rewinds to, the weights it trained to, and metadata.

On disk a ticket is a folder::

    mask.safetensors      bool masks by parameter name
    init.safetensors      the state dict the round trained from (θ0 for rewind-to-init)
    final.safetensors     the state dict after training (pruned weights exactly zero)
    ticket.json           metadata: round, weights_remaining, metrics, recipe_hash, seed,
                          per-layer sparsity, model, sha256 of each tensor file

Tensors use safetensors (no pickle) and are saved from CPU, so tickets move between
devices. ``ticket.json`` is written last, via a temporary file and a rename: a folder
without it is an unfinished round. Loading verifies checksums, names and shapes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from lth_core.errors import LthError
from lth_core.files import atomic_write_text, read_json, sha256_file
from lth_core.masks import Mask, check_mask_fits

FILES = ("mask", "init", "final")


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


def _cpu(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_ticket(ticket: Ticket, folder: str | os.PathLike) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {"mask": dict(ticket.mask.items()), "init": _cpu(ticket.init)}
    if ticket.final is not None:
        tensors["final"] = _cpu(ticket.final)
    sums = {}
    for which, state in tensors.items():
        path = folder / f"{which}.safetensors"
        tmp = folder / f".{which}.safetensors.tmp"
        save_file(state, str(tmp))
        os.replace(tmp, path)
        sums[which] = sha256_file(path)
    meta = dict(ticket.meta)
    meta["weights_remaining"] = ticket.mask.density()
    meta["sparsity"] = ticket.mask.report()
    meta["sha256"] = sums
    ticket.meta = meta
    atomic_write_text(folder / "ticket.json", json.dumps(meta, indent=2, sort_keys=True))
    return folder


def is_ticket(folder: str | os.PathLike) -> bool:
    return (Path(folder) / "ticket.json").is_file()


def require_ticket(folder: str | os.PathLike) -> None:
    """Fail early, before any data loads, when a command is given a folder that is not a ticket."""
    if not is_ticket(folder):
        raise LthError(f"{folder} is not a ticket folder (no ticket.json); give a folder such as RUN/round_3")


def load_ticket(folder: str | os.PathLike, model: nn.Module | None = None) -> Ticket:
    """Load a ticket folder, verifying checksums; with ``model``, also names and shapes."""
    folder = Path(folder)
    meta_path = folder / "ticket.json"
    if not meta_path.is_file():
        raise LthError(f"{folder} is not a ticket: no ticket.json (an unfinished round, or the wrong folder)")
    meta = read_json(meta_path)
    parts: dict[str, dict[str, Tensor]] = {}
    for which in FILES:
        path = folder / f"{which}.safetensors"
        if not path.is_file():
            if which == "final":
                continue
            raise LthError(f"ticket {folder} is missing {path.name}")
        expected = meta.get("sha256", {}).get(which)
        if expected and sha256_file(path) != expected:
            raise LthError(f"{path} does not match its checksum in ticket.json: the file is truncated or altered")
        try:
            parts[which] = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types
            raise LthError(f"{path} is not a readable safetensors file: {exc}") from exc
    bad = [n for n, t in parts["mask"].items() if t.dtype != torch.bool]
    if bad:
        raise LthError(f"{folder}/mask.safetensors holds non-bool masks: {bad}")
    ticket = Ticket(Mask(parts["mask"]), parts["init"], parts.get("final"), meta)
    if model is not None:
        ticket.check_fits(model, source=f"ticket {folder}")
    return ticket
