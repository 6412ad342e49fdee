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
  process (:meth:`DataParallel.agree`); a finished ticket found when resuming is read by rank 0 and
  sent to the others (:meth:`DataParallel.reuse`), which need not see the run folder.
  A checkpoint inside a round is written by rank 0 once every process's state is shown
  equal (:mod:`lth_core.engines.checkpoints`); on resume rank 0 reads it and sends the decision
  and its content to every process (:func:`lth_core.engines.checkpoints.load_from_rank_zero`).
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
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from lth_core.config.parallel import declared_world, indivisible, no_sync_bn
from lth_core.engines import checkpoints
from lth_core.engines.base import Engine, Fit
from lth_core.engines.checkpoints import Saved
from lth_core.engines.collectives import (_dist, all_gather_json, broadcast_json, broadcast_tensors, is_writer,
                                          rank, world_size)
from lth_core.private_apis import subprocess_script_launcher
from lth_core.errors import LthError
from lth_core.files import atomic_write_text
from lth_core.tickets.mask import Mask
from lth_core.tickets.ticket import Ticket, is_ticket, load_ticket

RANKS_FILE = "ranks.json"

_launched: list = []  # the processes Lightning's launcher started here (rank 0 of a node)


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
            raise LthError(no_sync_bn())
        if batch_size % fabric.world_size:
            raise LthError(indivisible(batch_size, fabric.world_size))
        fabric.launch()  # starts the other local ranks (or joins the cluster's) and the group
        _launched.extend(getattr(fabric.strategy.launcher, "procs", []))
    world = world_size()
    if declared_world(trainer) not in (None, world):
        raise LthError(f"trainer.devices x trainer.num_nodes is {declared_world(trainer)}, but this command already runs on {world} processes; "
                       "every trial and sweep point of one command must use the same processes")
    if batch_size % world:
        raise LthError(indivisible(batch_size, world))
    # The evaluation numbers LotteryModule logs come from torchmetrics, already summed over
    # every process: Lightning's advice to add sync_dist=True would only repeat that sum.
    warnings.filterwarnings("ignore", ".*when logging on epoch level in distributed setting.*")
    return world


def _fabric(trainer: dict):
    """Lightning Fabric with the recipe's devices: the same launcher and cluster detection
    (SLURM, torchrun, ``ddp``'s re-run) the Trainer uses, before any Trainer exists."""
    from lightning_fabric import Fabric

    strategy = trainer.get("strategy", "auto")
    try:
        fabric = Fabric(accelerator=trainer.get("accelerator", "auto"), devices=trainer.get("devices", "auto"),
                        num_nodes=trainer.get("num_nodes", 1), strategy="auto" if strategy == "auto" else "ddp")
    except Exception as exc:  # noqa: BLE001 - Lightning's MisconfigurationException, ValueError, ...
        raise LthError(f"trainer (accelerator/devices/num_nodes/strategy): {exc}") from None
    launcher = fabric.strategy.launcher
    if fabric.world_size > 1 and launcher is not None and not isinstance(launcher, subprocess_script_launcher()):
        raise LthError(f"trainer.strategy {strategy!r} picks {type(fabric.strategy).__name__} with a spawning launcher here; set trainer.strategy: ddp")
    return fabric


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


class DataParallel(Engine):
    """W processes train one ticket in lockstep (see the module docstring)."""

    def __init__(self) -> None:
        self.witness: Witness | None = None

    def reuse(self, run: Any, folder: Path) -> Ticket | None:
        """A finished ticket read by rank 0, the same on every process (which need not see
        the run folder); None on every process when rank 0 has none."""
        if not broadcast_json(is_ticket(folder)):
            return None
        mine = load_ticket(folder, run.model) if rank() == 0 else None
        head = broadcast_json({"meta": mine.meta, "final": mine.final is not None} if mine else None)
        mask = Mask(broadcast_tensors(dict(mine.mask.items()) if mine else None))
        init = broadcast_tensors(mine.init if mine else None)
        final = broadcast_tensors(mine.final if mine else None) if head["final"] else None
        return Ticket(mask, init, final, head["meta"])

    def agree(self, run: Any, mask: Mask, start: Any) -> tuple[Mask, Any]:
        """Rank 0's mask and start (weights, step, optimiser) for every process.

        Every process scores and rewinds as one process would; what rank 0 computed is then
        what all of them train, so a criterion or rewind that used rank-local state (its
        share of the data, a file on its own disk) cannot split the ticket.
        """
        mask = Mask(broadcast_tensors(dict(mask.items())))
        weights = broadcast_tensors(start.weights)
        head = broadcast_json({"step": start.step, "optimizer": start.optimizer})
        return mask, dataclasses.replace(start, weights=weights, step=head["step"], optimizer=head["optimizer"])

    def resume_point(self, run: Any, folder: Path, identity: dict) -> Saved | None:
        return checkpoints.load_from_rank_zero(folder, identity, run.say)

    def callbacks(self, module: Any, origins: dict[int, str]) -> list[pl.Callback]:
        self.witness = Witness()
        return [self.witness]

    def shard(self, loaders: Any) -> Any:
        """Give this process its share of a loader's (or a list of loaders') batches."""
        for loader in loaders if isinstance(loaders, list) else [loaders]:
            loader.rank, loader.world = rank(), world_size()
        return loaders

    def verify(self, fit: Fit) -> None:
        """Gather every process's witness; rank 0 records them in ``ranks.json``; any
        difference in the mask or the trained weights stops the lottery on every process."""
        ctx, out_dir, history = fit.context, Path(fit.run.out_dir), fit.module.history
        mine = {"rank": rank(), **self.witness.record, "examples": self.witness.examples,
                "eval": history[-1] if history else None}
        ranks = all_gather_json(mine)
        if is_writer():
            _record(out_dir, {"round": ctx.round, "run": ctx.name, "folder": str(Path(ctx.out_dir).relative_to(out_dir)), "ranks": ranks})
        for key, what in (("mask_start", "starting mask"), ("mask", "mask"), ("final", "trained weights")):
            odd = [r["rank"] for r in ranks if r.get(key) != ranks[0].get(key)]
            if odd:
                raise LthError(
                    f"round {ctx.round} [{ctx.name}]: process {odd[0]} ended with another {what} than rank 0 "
                    f"(see {out_dir / RANKS_FILE}); a callback that prunes must decide the same on every process"
                )
