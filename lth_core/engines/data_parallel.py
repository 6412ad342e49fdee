"""Data parallel lotteries: one recipe on W processes (Lightning's ``ddp``), one ticket.

A recipe asks for it in its ``trainer:`` section (``strategy: ddp``, ``devices: N``,
``num_nodes: M``): W = N x M processes run the same lottery in lockstep.

* **Launch.** :func:`connect` starts or joins the process group before the run folder is
  touched. On one machine Lightning's ``ddp`` launcher starts the same command
  (``sys.argv``, e.g. ``lth run recipe.yaml --out DIR``) again for local ranks 1..N-1; under
  SLURM (``srun``) or ``torchrun`` the cluster starts every process and each one joins.
  Every later ``Trainer`` of the lottery finds the group and reuses it.
* **Data.** ``data.batch_size`` is the global batch. Each process trains on its
  contiguous 1/W share of every global batch (:class:`lth_core.data.loaders.TensorLoader`), so
  DDP's averaged gradient is the gradient of the single-process batch. Evaluation is
  shared out the same way; torchmetrics sums the counts of every process, so each one
  records the whole validation and test sets' numbers.
* **One ticket.** Before each training run rank 0's mask and start weights go to every
  process (:func:`agree`); a finished ticket found when resuming is read by rank 0 and
  sent to the others (:func:`ticket_from_rank_zero`), which need not see the run folder.
  A checkpoint inside a round is written by rank 0 once every process's state is shown
  equal (:mod:`lth_core.engines.checkpoints`); on resume rank 0 reads it and sends the decision
  and its content to every process (:func:`checkpoint_from_rank_zero`).
  After each run every process reports digests of its mask and weights (:class:`Witness`);
  rank 0 keeps them in ``RUN/ranks.json``, and a mask or trained weights that differ
  between processes stop the lottery.
* **One writer.** Only rank 0 writes results and logs (:func:`is_writer`).

Tensors travel as tensors and metadata as JSON: nothing is pickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import pytorch_lightning as pl
import torch

from lth_core.errors import LthError, choices
from lth_core.files import atomic_write_text

#: Strategies a recipe may name. The spawning ones (``ddp_spawn``, ``ddp_fork``,
#: ``ddp_notebook``) train each fit in processes that end with it, taking the round's
#: history and mask with them; FSDP and DeepSpeed shard the weights a mask must see whole.
STRATEGIES = ("auto", "ddp", "ddp_find_unused_parameters_false", "ddp_find_unused_parameters_true")
RANKS_FILE = "ranks.json"
#: Where launchers put a process's rank before the process group exists.
_ENV_RANKS = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")

_launched: list = []  # the processes Lightning's launcher started here (rank 0 of a node)


def declared_world(trainer: dict) -> int | None:
    """Processes the recipe's trainer asks for (devices x num_nodes), or None for ``auto``/-1."""
    devices, nodes = trainer.get("devices", "auto"), trainer.get("num_nodes", 1)
    if isinstance(devices, str) and devices.strip().isdigit():
        devices = int(devices)
    if isinstance(devices, (list, tuple)):
        devices = len(devices)
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        return None
    return devices * nodes


def check_trainer(trainer: dict, batch_size: int, source: str) -> None:
    """Recipe check: a supported strategy, whole nodes, a global batch that divides evenly."""
    strategy = trainer.get("strategy", "auto")
    if strategy not in STRATEGIES:
        why = ""
        if isinstance(strategy, str) and any(w in strategy for w in ("spawn", "fork", "notebook")):
            why = " (it trains in processes that end with each fit, taking the round's history and mask with them; use ddp)"
        raise LthError(f"{source}: trainer.strategy {strategy!r} is not supported{why}; valid: {choices(STRATEGIES)}")
    nodes = trainer.get("num_nodes", 1)
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise LthError(f"{source}: trainer.num_nodes must be a whole number >= 1, got {nodes!r}")
    world = declared_world(trainer)
    if world and batch_size % world:
        raise LthError(_indivisible(batch_size, world, source))
    if trainer.get("sync_batchnorm") and trainer.get("accelerator") == "cpu" and world != 1:
        raise LthError(_no_sync_bn(source))


def _no_sync_bn(source: str = "") -> str:
    where = f"{source}: " if source else ""
    return f"{where}trainer.sync_batchnorm needs GPUs (torch's SyncBatchNorm has no CPU version); remove it or use accelerator: gpu"


def _indivisible(batch_size: int, world: int, source: str = "") -> str:
    where = f"{source}: " if source else ""
    return (f"{where}data.batch_size={batch_size} is the global batch and must split evenly over {world} processes "
            f"(trainer.devices x trainer.num_nodes); use a multiple of {world}")


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
    """Only global rank 0 writes run folders, tickets, reports and W&B."""
    return rank() == 0


def speaker(say: Callable[[str], None]) -> Callable[[str], None]:
    """``say`` on rank 0; silence elsewhere (every process would print the same lines)."""
    return say if is_writer() else (lambda _text: None)


def connect(recipe) -> int:
    """Start or join the process group the recipe's trainer asks for; return the world size.

    One process (the usual case) returns 1 without touching torch.distributed. On a node's
    rank 0, Lightning's launcher re-runs this command for the other local ranks; they come
    back here and join. A group that exists already (the next trial) is reused.
    """
    trainer, batch_size = recipe["trainer"], recipe["data"]["batch_size"]
    dist = _dist()
    if dist is None:
        if declared_world(trainer) == 1:
            return 1
        fabric = _fabric(trainer)
        if fabric.world_size == 1:
            return 1
        if trainer.get("sync_batchnorm") and fabric.device.type == "cpu":
            raise LthError(_no_sync_bn())
        if batch_size % fabric.world_size:
            raise LthError(_indivisible(batch_size, fabric.world_size))
        fabric.launch()  # starts the other local ranks (or joins the cluster's) and the group
        _launched.extend(getattr(fabric.strategy.launcher, "procs", []))
    world = world_size()
    if declared_world(trainer) not in (None, world):
        raise LthError(f"trainer.devices x trainer.num_nodes is {declared_world(trainer)}, but this command already runs on {world} processes; "
                       "every trial and sweep point of one command must use the same processes")
    if batch_size % world:
        raise LthError(_indivisible(batch_size, world))
    # The evaluation numbers LotteryModule logs come from torchmetrics, already summed over
    # every process: Lightning's advice to add sync_dist=True would only repeat that sum.
    warnings.filterwarnings("ignore", ".*when logging on epoch level in distributed setting.*")
    return world


def _fabric(trainer: dict):
    """Lightning Fabric with the recipe's devices: the same launcher and cluster detection
    (SLURM, torchrun, ``ddp``'s re-run) the Trainer uses, before any Trainer exists."""
    from lightning_fabric import Fabric
    from lightning_fabric.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    strategy = trainer.get("strategy", "auto")
    try:
        fabric = Fabric(accelerator=trainer.get("accelerator", "auto"), devices=trainer.get("devices", "auto"),
                        num_nodes=trainer.get("num_nodes", 1), strategy="auto" if strategy == "auto" else "ddp")
    except Exception as exc:  # noqa: BLE001 - Lightning's MisconfigurationException, ValueError, ...
        raise LthError(f"trainer (accelerator/devices/num_nodes/strategy): {exc}") from None
    launcher = fabric.strategy.launcher
    if fabric.world_size > 1 and launcher is not None and not isinstance(launcher, _SubprocessScriptLauncher):
        raise LthError(f"trainer.strategy {strategy!r} picks {type(fabric.strategy).__name__} with a spawning launcher here; set trainer.strategy: ddp")
    return fabric


def require_connected(trainer: dict) -> None:
    """A training run outside ``lth run`` (``lth merge``, ``lth extend``) has no processes
    to share with: refuse a recipe that asks for several rather than train it twice."""
    declared = declared_world(trainer)
    if world_size() == 1 and declared and declared > 1:
        raise LthError(f"the recipe's trainer asks for {declared} processes, which only `lth run` starts; "
                       "add --set trainer.devices=1 --set trainer.num_nodes=1 --set trainer.strategy=auto")


def disconnect() -> None:
    """End of a command: every process arrives, the group closes, launched ranks are reaped."""
    dist = _dist()
    if dist is None:
        return
    if dist.get_world_size() > 1:
        dist.barrier()
    dist.destroy_process_group()
    while _launched:
        _launched.pop().wait()


def shard(loaders):
    """Give each process its share of a loader's (or a list of loaders') batches."""
    world = world_size()
    if world > 1:
        for loader in loaders if isinstance(loaders, list) else [loaders]:
            loader.rank, loader.world = rank(), world
    return loaders


# --- moving rank 0's values to every process -------------------------------------------

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


def agree(mask, start):
    """Rank 0's mask and start (weights, step, optimiser) for every process.

    Every process scores and rewinds as one process would; what rank 0 computed is then
    what all of them train, so a criterion or rewind that used rank-local state (its share
    of the data, a file on its own disk) cannot split the ticket.
    """
    if world_size() == 1:
        return mask, start
    from lth_core.tickets.masks import Mask

    mask = Mask(broadcast_tensors(dict(mask.items())))
    weights = broadcast_tensors(start.weights)
    head = broadcast_json({"step": start.step, "optimizer": start.optimizer})
    return mask, dataclasses.replace(start, weights=weights, step=head["step"], optimizer=head["optimizer"])


def ticket_from_rank_zero(load: Callable, folder: Path, model):
    """A finished ticket read by rank 0 (``load(folder, model)``), the same on every process."""
    if world_size() == 1:
        return load(folder, model)
    from lth_core.tickets.masks import Mask
    from lth_core.tickets.ticket import Ticket

    mine = load(folder, model) if rank() == 0 else None
    head = broadcast_json({"meta": mine.meta, "final": mine.final is not None} if mine else None)
    mask = Mask(broadcast_tensors(dict(mine.mask.items()) if mine else None))
    init = broadcast_tensors(mine.init if mine else None)
    final = broadcast_tensors(mine.final if mine else None) if head["final"] else None
    return Ticket(mask, init, final, head["meta"])


def checkpoint_from_rank_zero(load: Callable, folder: Path, expected: dict, say: Callable[[str], None]):
    """The checkpoint to resume from (``load(folder, expected, say)``, read and verified by
    rank 0 alone) or None, the same on every process: rank 0's decision, then its content."""
    if world_size() == 1:
        return load(folder, expected, say)
    from lth_core.engines.checkpoints import Saved, pack, unpack

    mine = load(folder, expected, say) if rank() == 0 else None
    tensors: dict[str, torch.Tensor] = {}
    head = broadcast_json({"path": str(mine.path), "step": mine.step, "state": pack(mine.state, tensors)} if mine else None)
    if head is None:  # every process: train from the start
        return None
    got = broadcast_tensors(tensors if mine else None)
    return Saved(Path(head["path"]), int(head["step"]), unpack(head["state"], got))


# --- per-process evidence -----------------------------------------------------------------

def digest(tensors) -> str:
    """SHA-256 over named tensors (name, dtype, shape, bytes; names sorted): equal digests
    mean bit-identical tensors. ``ranks.json`` records masks and weights this way."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class Witness(pl.Callback):
    """What this process did in one training run, seen from inside the fit: the mask it
    started under, the examples it trained on, and its mask and weights at the end."""

    def __init__(self) -> None:
        self.examples = 0
        self.record: dict[str, Any] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.record["mask_start"] = digest(dict(pl_module.mask.items()))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.examples += int(batch[1].shape[0])

    def on_train_end(self, trainer, pl_module) -> None:
        self.record["mask"] = digest(dict(pl_module.mask.items()))
        self.record["final"] = digest(dict(pl_module.model.named_parameters()))
        self.record["steps"] = int(pl_module.step)


def witnesses() -> list[Witness]:
    """The callbacks a training run adds under data parallel: none in one process."""
    return [Witness()] if world_size() > 1 else []


def verify(found: list[Witness], history: list[dict], out_dir: Path, folder: Path, round_: int, name: str) -> None:
    """Gather every process's witness; rank 0 records them in ``ranks.json``; any
    difference in the mask or the trained weights stops the lottery on every process."""
    if not found:
        return
    mine = {"rank": rank(), **found[0].record, "examples": found[0].examples,
            "eval": history[-1] if history else None}
    ranks = all_gather_json(mine)
    if is_writer():
        _record(Path(out_dir), {"round": round_, "run": name, "folder": str(Path(folder).relative_to(out_dir)), "ranks": ranks})
    for key, what in (("mask_start", "starting mask"), ("mask", "mask"), ("final", "trained weights")):
        odd = [r["rank"] for r in ranks if r.get(key) != ranks[0].get(key)]
        if odd:
            raise LthError(
                f"round {round_} [{name}]: process {odd[0]} ended with another {what} than rank 0 "
                f"(see {Path(out_dir) / RANKS_FILE}); a callback that prunes must decide the same on every process"
            )


def _record(out_dir: Path, entry: dict) -> None:
    """Add (or, on a rerun, replace) one training run's entry in ``ranks.json``."""
    path = out_dir / RANKS_FILE
    runs = []
    if path.is_file():
        try:
            runs = json.loads(path.read_text()).get("runs", [])
        except (json.JSONDecodeError, AttributeError):
            runs = []
    runs = [r for r in runs if r.get("folder") != entry["folder"]] + [entry]
    atomic_write_text(path, json.dumps({"world_size": world_size(), "runs": runs}, indent=1))
