"""``lth report`` for ``lth merge`` folders: the linear-path figure and a merge table.

A folder holding ``merge.json`` (and no ``summary.json``) is a merge. Its figure,
``merge_path.png`` (``merge_path_<folder>.png`` when several merges are reported), plots
test accuracy and test loss against λ on the path ``(1-λ)A + λB``: the naive path between
the tickets' own weights and, after weight matching, the aligned one. Torch-free, like the
rest of ``lth report``.
"""

from __future__ import annotations

from pathlib import Path

from lth_core.files import atomic_path, make_dir, read_json

MERGE_FILE = "merge.json"


def is_merge_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / MERGE_FILE).is_file() and not (path / "summary.json").is_file()


def path_figure(record: dict, out: Path, name: str) -> Path | None:
    """Accuracy and loss along every path of one merge; ``None`` when it has no path."""
    if not record.get("paths"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for p in record["paths"]:
        lam = [pt["lambda"] for pt in p["points"]]
        label = f"{p['from']}→{p['to']} {p['kind']} (barrier {p['loss_barrier']:.3f})"
        style = "-o" if p["kind"] == "aligned" else "--s"
        acc_ax.plot(lam, [100 * pt["test_acc"] for pt in p["points"]], style, markersize=4, label=label)
        loss_ax.plot(lam, [pt["test_loss"] for pt in p["points"]], style, markersize=4, label=label)
    for ax, what in ((acc_ax, "test accuracy (%)"), (loss_ax, "test loss")):
        ax.set_xlabel("λ in (1-λ)A + λB")
        ax.set_ylabel(what)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Linear path between tickets ({record['strategy']})")
    fig.tight_layout()
    path = out / f"{name}.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def merge_table(record: dict) -> str:
    """Each ticket and the merge: weights remaining, validation and test accuracy, test loss."""
    lines = ["| network | weights remaining (%) | val acc (%) | test acc (%) | test loss |", "|---|---|---|---|---|"]
    rows = [(f"{lab}: `{m['path']}`", m) for lab, m in zip(record["labels"], record["members"])]
    rows.append((f"**{record['strategy']}**", record["merged"]))
    for label, m in rows:
        lines.append(f"| {label} | {100 * m['weights_remaining']:.2f} | {100 * m['val_acc']:.2f} | {100 * m['test_acc']:.2f} | {m['test_loss']:.4f} |")
    return "\n".join(lines)


def barrier_table(record: dict) -> str:
    lines = ["| path | kind | loss barrier | accuracy barrier (points) | test acc at λ=0.5 (%) |", "|---|---|---|---|---|"]
    for p in record["paths"]:
        mid = min(p["points"], key=lambda pt: abs(pt["lambda"] - 0.5))
        lines.append(f"| {p['from']}→{p['to']} | {p['kind']} | {p['loss_barrier']:.4f} | {100 * p['acc_barrier']:.2f} | {100 * mid['test_acc']:.2f} |")
    return "\n".join(lines)


def merge_sections(dirs: list[Path], out: Path) -> list[str]:
    """Figures (written into ``out``) and Markdown for each merge folder."""
    make_dir(out)
    parts: list[str] = []
    for d in dirs:
        record = read_json(d / MERGE_FILE)
        name = "merge_path" if len(dirs) == 1 else f"merge_path_{d.name}"
        overlap = record.get("mask_overlap", {})
        parts += [f"## Merge: {record['strategy']} (`{d}`)", "", merge_table(record), ""]
        if overlap:
            parts += [f"Mask overlap: intersection {100 * overlap['intersection']:.2f}% of weights, union "
                      f"{100 * overlap['union']:.2f}%, Jaccard {overlap['jaccard']:.3f} (independent masks of these "
                      f"densities would share {100 * overlap['intersection_if_independent']:.2f}%).", ""]
        figure = path_figure(record, out, name)
        if figure is not None:
            parts += [barrier_table(record), "", f"![{name}]({figure.name})", ""]
    return parts
