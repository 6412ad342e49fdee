"""`lth export` on real tickets: parameters, file size and CPU latency against the dense model.

    python benchmarks/export_table.py OUT_DIR TICKET [TICKET ...]

Each ticket is exported twice into OUT_DIR: with every fully connected layer stored dense
(``--sparse-below 0``) and with layers at or below 30% density stored as their nonzeros
(the default). Prints a Markdown table, then one JSON line with every record. Latency is
the median of 30 forward passes in this process (batch 1 and batch 256), one thread.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lth_core import quiet_lightning
from lth_core.commands.exporting import export_ticket


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("tickets", nargs="+")
    args = ap.parse_args()
    torch.set_num_threads(1)
    quiet_lightning()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "| ticket | weights remaining | storage | stored parameters | file (KB) | latency batch 1 (ms) | latency batch 256 (ms) | same predictions |",
        "|---|---|---|---|---|---|---|---|",
    ]
    records = []
    for i, ticket in enumerate(args.tickets):
        for label, below in (("dense layers", 0.0), ("sparse <= 30%", 0.3)):
            r = export_ticket(ticket, out / f"{i}_{int(below * 100)}.pt2", sparse_below=below)
            records.append(r)
            lat = r["latency_ms"]
            if below == 0.0:
                lines.append(
                    f"| {Path(ticket).name} | {r['weights_remaining']:.1%} | dense model (baseline) | {r['parameters']['dense']:,} "
                    f"| {r['file_bytes']['dense'] / 1000:.0f} | {lat['batch_1']['dense']:.3f} | {lat['batch_256']['dense']:.2f} | - |"
                )
            lines.append(
                f"| {Path(ticket).name} | {r['weights_remaining']:.1%} | compact, {label} | {r['parameters']['compact']:,} "
                f"| {r['file_bytes']['compact'] / 1000:.0f} | {lat['batch_1']['compact']:.3f} | {lat['batch_256']['compact']:.2f} "
                f"| {r['prediction_agreement']:.2%} |"
            )
    print("\n".join(lines))
    print(json.dumps(records))


if __name__ == "__main__":
    main()
