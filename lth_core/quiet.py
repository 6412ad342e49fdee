"""Lightning's chatter, silenced: a lottery makes dozens of Trainers, each with banners."""

from __future__ import annotations

import logging
import warnings


def quiet_lightning() -> None:
    """Lightning prints device banners for every Trainer; a lottery makes dozens."""
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", ".*is an invalid name for a W&B.*")
    warnings.filterwarnings("ignore", ".*isinstance.treespec, LeafSpec.*")
