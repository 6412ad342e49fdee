"""The paper's measurements of a training run, and the lottery's table of them."""

from __future__ import annotations

import math

from lth_core.errors import LthError
from lth_core.reporting.figures import is_capped
from lth_core.tickets.mask import Mask


def summarise(history: list[dict], round_: int, mask: Mask, steps: int, monitor: str = "val_loss",
              mode: str = "min", test_metric: str = "test_acc", final_only: bool = False) -> dict:
    """The paper's measurements from a run's evaluation history.

    The early-stopping step is the evaluation with the best ``monitor`` (lowest for ``min``,
    highest for ``max``; the paper's is the lowest validation loss). Early stopping only
    looks at evaluations made under the run's final mask: when a callback pruned during
    training, an earlier, denser network is not this ticket. ``test_acc`` is
    ``test_metric`` there, ``test_acc_final`` at the last evaluation; ``val_loss_min`` and
    ``val_acc`` are the chosen evaluation's, when it recorded them. ``final_only`` (a
    callback owned the mask, which moves both ways at a constant density) makes the last
    evaluation the early-stopping step: any earlier one was another mask's network.
    """
    if not history:
        raise LthError("a round finished with no evaluation: set trainer.max_steps >= 1")
    density = mask.density()
    finite = [h for h in history if math.isfinite(h.get(monitor, math.nan)) and h.get("weights_remaining", density) == density]
    if final_only:
        finite = []
    pick = min if mode == "min" else max
    best = pick(finite, key=lambda h: h[monitor]) if finite else history[-1]
    last = history[-1]
    row = {"round": round_, "weights_remaining": mask.density(), "early_stop_step": int(best["step"])}
    row.update({key: float(best[name]) for key, name in (("val_loss_min", "val_loss"), ("val_acc", "val_acc")) if name in best})
    if monitor not in ("val_loss", "val_acc") and monitor in best:
        row[monitor] = float(best[monitor])
    row.update({"test_acc": float(best[test_metric]), "test_acc_final": float(last[test_metric]), "steps": int(steps)})
    return row


def progress_line(row: dict, name: str, total: int) -> str:
    """One finished run, as the lottery reports it while it goes."""
    return (
        f"round {row['round']}/{total} [{name}] weights remaining {row['weights_remaining']:.2%}  "
        f"test acc {row['test_acc']:.4f} (early stop @ step {row['early_stop_step']}), "
        f"final {row['test_acc_final']:.4f}"
    )


def format_table(summary: dict) -> str:
    """All rounds, the ticket and every control side by side, as plain text."""
    names = ["ticket"] + list(summary["controls"])
    by_round: dict[int, dict[str, dict]] = {}
    for r in summary["rounds"]:
        by_round.setdefault(r["round"], {})["ticket"] = r
    for name, rows in summary["controls"].items():
        for r in rows:
            by_round.setdefault(r["round"], {})[name] = r
    header = f"{'round':>5} {'remaining':>9} " + " ".join(f"{n + ' acc':>22} {'stop':>7}" for n in names)
    lines, capped = [header, "-" * len(header)], False
    for k in sorted(by_round):
        cells = by_round[k]
        wr = cells["ticket"]["weights_remaining"]
        parts = []
        for n in names:
            r = cells.get(n)
            mark = "*" if r and is_capped(r) else " "
            capped = capped or mark == "*"
            parts.append(f"{r['test_acc']:>22.4f} {r['early_stop_step']:>6d}{mark}" if r else f"{'-':>22} {'-':>6} ")
        lines.append((f"{k:>5} {wr:>9.2%} " + " ".join(parts)).rstrip())
    if capped:
        lines.append("* capped: the early stop is the run's last step; the minimum validation loss may lie beyond "
                     "trainer.max_steps")
    return "\n".join(lines)

