"""What a recipe's ``trainer:`` asks of processes: checked with the recipe, before any run.

A data-parallel lottery (:mod:`lth_core.engines.data_parallel`) runs on ``trainer.devices
x trainer.num_nodes`` processes; these checks need no process group and no torch.
"""

from __future__ import annotations

from lth_core.errors import LthError, choices

#: Strategies a recipe may name. The spawning ones (``ddp_spawn``, ``ddp_fork``,
#: ``ddp_notebook``) train each fit in processes that end with it, taking the round's
#: history and mask with them; FSDP and DeepSpeed shard the weights a mask must see whole.
STRATEGIES = ("auto", "ddp", "ddp_find_unused_parameters_false", "ddp_find_unused_parameters_true")


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
        raise LthError(indivisible(batch_size, world, source))
    if trainer.get("sync_batchnorm") and trainer.get("accelerator") == "cpu" and world != 1:
        raise LthError(no_sync_bn(source))


def no_sync_bn(source: str = "") -> str:
    where = f"{source}: " if source else ""
    return f"{where}trainer.sync_batchnorm needs GPUs (torch's SyncBatchNorm has no CPU version); remove it or use accelerator: gpu"


def indivisible(batch_size: int, world: int, source: str = "") -> str:
    where = f"{source}: " if source else ""
    return (f"{where}data.batch_size={batch_size} is the global batch and must split evenly over {world} processes "
            f"(trainer.devices x trainer.num_nodes); use a multiple of {world}")
