"""The ``lth report`` section for folders written by ``lth extend`` (they hold ``extend.json``).

One section per folder: the accuracy of every variant on every task (task-incremental:
the task's own output units) and over all classes with one head (class-incremental),
the proofs that old tasks are untouched, the weights each task owns, and a bar figure.
Registered by the plugin through ``register_report_sections`` as ``extension``.
"""

from __future__ import annotations

from pathlib import Path

from lth_core import atomic_path, make_dir, read_json

#: The record ``lth extend`` writes last (torch-free here: ``lth report`` and ``lth plugins`` import this module).
EXTEND_JSON = "extend.json"


def is_extension(folder: Path) -> bool:
    """An ``lth extend`` output folder (a lottery run folder has ``summary.json`` instead)."""
    return (folder / EXTEND_JSON).is_file() and not (folder / "summary.json").is_file()


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _task_label(task: dict) -> str:
    classes = task["classes"]
    span = f"{classes[0]}-{classes[-1]}" if classes == list(range(classes[0], classes[-1] + 1)) else ",".join(map(str, classes))
    return f"task {task['task']} (classes {span})"


def results_table(record: dict) -> str:
    """Variants as rows; each task's accuracy, joint accuracy, and joint accuracy per task."""
    tasks = record["tasks"]
    ids = [str(t["task"]) for t in tasks]
    header = "| variant | " + " | ".join(f"{_task_label(t)} acc (%)" for t in tasks) + " | joint acc (%) | " + " | ".join(
        f"joint acc on task {i} (%)" for i in ids) + " |"
    lines = [header, "|" + "---|" * (2 + 2 * len(ids))]
    rows = {"before (source)": record["before"], **record["variants"]}
    for name, v in rows.items():
        cells = [_pct(v["task_acc"].get(i)) for i in ids] + [_pct(v["joint_acc"])] + [_pct(v["joint_acc_by_task"].get(i)) for i in ids]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def proofs(record: dict) -> str:
    lines = []
    for name, v in record["variants"].items():
        if "frozen_weights_unchanged" in v:
            same = ", ".join(f"task {t}: {'identical' if ok else 'CHANGED'}" for t, ok in v["old_task_logits_identical"].items())
            lines.append(f"- {name}: frozen weights {'bitwise unchanged' if v['frozen_weights_unchanged'] else 'CHANGED'}; "
                         f"old tasks' test logits bit for bit: {same}; {v['rehearsal_per_class']} rehearsal examples per old class")
    return "\n".join(lines)


def ownership_table(record: dict) -> str:
    after = record["parameters"]["after"]
    owners = [k for k in after if k != "total"]
    lines = ["| | " + " | ".join(owners) + " | total |", "|" + "---|" * (len(owners) + 2)]
    for when in ("before", "after"):
        counts = record["parameters"][when]
        lines.append(f"| {when} | " + " | ".join(str(counts.get(o, "-")) for o in owners) + f" | {counts['total']} |")
    return "\n".join(lines)


def bar_figure(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [str(t["task"]) for t in record["tasks"]]
    rows = {"before (source; joint over its own classes)": record["before"], **record["variants"]}
    metrics = [(f"task {t}", lambda v, t=t: v["task_acc"].get(t)) for t in tasks] + [("joint", lambda v: v["joint_acc"])]
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (name, v) in enumerate(rows.items()):
        ys = [100 * (f(v) or 0.0) for _, f in metrics]
        ax.bar([m + i * width for m in range(len(metrics))], ys, width, label=name)
    ax.set_xticks([m + 0.4 - width / 2 for m in range(len(metrics))], [label for label, _ in metrics])
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("lth extend: task-incremental (own units) and joint (one head) accuracy")
    ax.set_ylim(0, 125)
    ax.legend(fontsize=7, loc="upper center", ncol=3)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def extension_sections(dirs: list[Path], out: Path) -> list[str]:
    """``report.md`` sections and one bar figure per extension folder."""
    parts: list[str] = []
    for d in dirs:
        make_dir(out)
        record = read_json(Path(d) / EXTEND_JSON)
        figure = out / f"extend_{Path(d).name}.png"
        bar_figure(record, figure)
        s = record["settings"]
        parts += [f"## Extension: {d}", "",
                  f"Source `{record['source']}` ({record['source_kind']}); new classes {s['classes']}, "
                  f"rehearsal {s['rehearsal']} per old class, prune {s['prune']}; "
                  f"{record['steps_per_variant']} training steps per variant. Task accuracy uses the task's own "
                  "output units (PackNet: only the weights of tasks up to it); joint accuracy one head over all classes.", "",
                  results_table(record), "", proofs(record), "", "Prunable weights by owner:", "", ownership_table(record), "",
                  f"![accuracy by variant]({figure.name})", ""]
    return parts
