"""What the processes of a data-parallel run tell each other, and who this process is.

One process (the usual case) never touches ``torch.distributed``: every function here
answers for a world of one. Tensors travel as tensors and metadata as JSON; nothing is
pickled. The lottery's data-parallel engine (:mod:`lth_core.engines.data_parallel`) and its
checkpoints (:mod:`lth_core.engines.checkpoints`) build on these.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable

import torch

from lth_core.config.parallel import declared_world
from lth_core.errors import LthError

#: Where launchers put a process's rank before the process group exists.
_ENV_RANKS = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def _dist():
    """``torch.distributed`` when a process group is up, else None (one process)."""
    dist = sys.modules.get("torch.distributed")
    return dist if dist is not None and dist.is_available() and dist.is_initialized() else None


def world_size() -> int:
    dist = _dist()
    return dist.get_world_size() if dist else 1


def rank() -> int:
    """The group's rank of this process; before the group exists, a launcher's rank variable
    (0 exactly when every one the launchers set is 0: global rank 0)."""
    dist = _dist()
    if dist:
        return dist.get_rank()
    for var in _ENV_RANKS:
        try:
            if int(os.environ.get(var, "0") or 0):
                return int(os.environ[var])
        except ValueError:
            continue
    return 0


def is_writer() -> bool:
    """Does this process write results? Only global rank 0 of a data-parallel run writes
    run folders, tickets, reports and W&B (one process: always)."""
    return rank() == 0


def speaker(say: Callable[[str], None]) -> Callable[[str], None]:
    """``say`` on rank 0; silence elsewhere (every process would print the same lines)."""
    return say if is_writer() else (lambda _text: None)


def _device() -> torch.device:
    """NCCL moves CUDA tensors only; gloo moves CPU tensors."""
    if _dist().get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_json(value: Any) -> Any:
    """Rank 0's JSON-able ``value`` on every process (the others' argument is ignored)."""
    dist, dev = _dist(), _device()
    if dist.get_rank() == 0:
        payload = torch.frombuffer(bytearray(json.dumps(value).encode()), dtype=torch.uint8).to(dev)
        size = torch.tensor([payload.numel()], dtype=torch.int64, device=dev)
    else:
        size = torch.zeros(1, dtype=torch.int64, device=dev)
    dist.broadcast(size, src=0)
    if dist.get_rank() != 0:
        payload = torch.empty(int(size.item()), dtype=torch.uint8, device=dev)
    dist.broadcast(payload, src=0)
    return json.loads(bytes(payload.cpu().numpy()).decode())


def broadcast_tensors(tensors: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """Rank 0's named tensors on every process, on the CPU; the others may pass None."""
    dev = _device()
    mine = tensors if rank() == 0 else None
    head = broadcast_json({n: [list(t.shape), str(t.dtype).removeprefix("torch.")] for n, t in mine.items()} if mine is not None else None)
    out = {}
    for name, (shape, dtype_name) in head.items():
        dtype = getattr(torch, dtype_name)
        wire = torch.uint8 if dtype == torch.bool else dtype  # gloo has no bool
        if mine is not None:
            t = mine[name].detach().to(dev, wire).contiguous().clone()
        else:
            t = torch.empty(shape, dtype=wire, device=dev)
        _dist().broadcast(t, src=0)
        out[name] = t.to("cpu", dtype)
    return out


def mean_over_processes(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The mean of each tensor over the processes of a data-parallel run, in name order
    (one process: ``tensors`` as they are). Every process must pass the same names.

    For a callback that keeps trainable tensors of its own (not the model's parameters,
    which DDP averages): average their gradients before stepping so every process takes
    the same step (``movement_pruning``'s scores), or a per-batch statistic before acting
    on it (RigL's dense gradient)."""
    dist = _dist()
    if dist is None or not tensors:
        return tensors
    out = {}
    for name in sorted(tensors):
        t = tensors[name].detach().to(_device()).contiguous().clone()
        dist.all_reduce(t)
        out[name] = t.div_(dist.get_world_size()).to(tensors[name].device)
    return {n: out[n] for n in tensors}


def all_gather_json(value: Any) -> list:
    """Every process's JSON-able ``value``, in rank order, on every process."""
    dist, dev = _dist(), _device()
    data = torch.frombuffer(bytearray(json.dumps(value).encode()), dtype=torch.uint8).to(dev)
    sizes = [torch.zeros(1, dtype=torch.int64, device=dev) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([data.numel()], dtype=torch.int64, device=dev))
    longest = max(int(s.item()) for s in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8, device=dev)
    padded[: data.numel()] = data
    parts = [torch.empty(longest, dtype=torch.uint8, device=dev) for _ in sizes]
    dist.all_gather(parts, padded)
    return [json.loads(bytes(p[: int(s.item())].cpu().numpy()).decode()) for p, s in zip(parts, sizes)]


def from_rank_zero(value: Any) -> Any:
    """Rank 0's answer (e.g. "is this round finished?") for every process."""
    return broadcast_json(value) if world_size() > 1 else value


def require_connected(trainer: dict) -> None:
    """A training run outside ``lth run`` (``lth merge``, ``lth extend``) has no processes
    to share with: refuse a recipe that asks for several rather than train it twice."""
    declared = declared_world(trainer)
    if world_size() == 1 and declared and declared > 1:
        raise LthError(f"the recipe's trainer asks for {declared} processes, which only `lth run` starts; "
                       "add --set trainer.devices=1 --set trainer.num_nodes=1 --set trainer.strategy=auto")
