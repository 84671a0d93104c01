"""Render the quality benchmark's summary (bench/quality.py) as a Markdown table and a PNG plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLUMNS = (
    "config",
    "method",
    "student",
    "seeds",
    "dev Rouge-L",
    "test Rouge-L",
    "test EM",
    "dev CE",
    "train s",
    "eval s",
    "status",
)
STUDENT_LABEL = {"student": "same vocab", "cross_student": "cross vocab"}


def _pm(value: dict[str, float] | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value['mean']:.{digits}f} ± {value['std']:.{digits}f}"


def row_label(row: dict[str, Any]) -> str:
    """Row name; on-policy rows also say which off-policy setting they repeat."""
    if not row["name"].startswith("onpolicy") or row["method"] == "-":
        return row["name"]
    divergence = row["overrides"].get("distill.divergence")
    return f"{row['name']} = {row['method']}" + (f"_{divergence}" if divergence else "")


def table_rows(summary: dict[str, Any]) -> list[list[str]]:
    """The table as cells: the reference models first, then one line per configuration."""
    refs = summary["references"]
    cells = []
    for name, label in (
        ("teacher", "teacher"),
        ("student", "untrained student"),
        ("cross_student", "untrained cross student"),
    ):
        r = refs[name]
        cells.append(
            [
                label,
                "-",
                STUDENT_LABEL.get(name, "teacher"),
                "1",
                f"{r['dev_rougeL']:.1f}",
                f"{r['test_rougeL']:.1f}",
                f"{r['test_em']:.1f}",
                "-",
                "-",
                f"{r['eval_s']:.0f}",
                "reference",
            ]
        )
    for row in summary["rows"]:
        divergence = row["overrides"].get("distill.divergence")
        method = row["method"] + (
            f" ({divergence})" if divergence and row["method"] not in {"uld", "mined"} else ""
        )
        ok = "dev_rougeL" in row
        cells.append(
            [
                row_label(row),
                method,
                STUDENT_LABEL[row["student"]],
                str(row["seeds"]),
                _pm(row.get("dev_rougeL")),
                _pm(row.get("test_rougeL")),
                _pm(row.get("test_em")),
                _pm(row.get("dev_ce"), digits=3),
                f"{row['train_s']:.0f}" if ok else "–",
                f"{row['eval_s']:.0f}" if ok else "–",
                row["status"].replace("|", "/"),
            ]
        )
    return cells


def markdown_table(summary: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(summary)]
    return "\n".join(lines)


def write_markdown(summary: dict[str, Any], path: Path) -> None:
    b, m = summary["budget"], summary["machine"]
    text = [
        "# Quality benchmark results",
        "",
        f"Command: `{summary.get('command', 'bench/quality.py')}`; toy world `{summary['world_path']}` "
        f"(size {summary['world'].get('size')}); {summary['bench_seconds'] / 60:.1f} min on {m['platform']}, "
        f"{m['cpu_count']} CPUs, {m['torch_threads']} torch threads, load average before/after "
        f"{m['load_average_before']} / {m['load_average_after']}.",
        "",
        f"Budget per run: {b['steps']} steps × batch {b['batch_size']} on the first {b['train_examples']} train "
        f"records, lr {b['lr']}, warmup {b['warmup_ratio']}, cosine; kd_rate {b['kd_rate']}, τ {b['temperature']}. "
        f"Seeds {list(b['seeds'])}. Evaluation: greedy, first {b['eval_dev']} dev and {b['eval_test']} test "
        f"records, max {b['max_new_tokens']} new tokens; Rouge-L F1 ×100 (best over references) and exact match "
        "(EM, %), mean ± std (ddof=0) over training seeds. dev CE: teacher-forced response cross-entropy per token "
        f"on the first {b['dev_ce_examples']} dev records at the end of training. Times are mean seconds per run.",
        "",
        markdown_table(summary),
        "",
    ]
    path.write_text("\n".join(text))


def write_plot(summary: dict[str, Any], path: Path) -> None:
    """Dev and test Rouge-L (mean ± std) per configuration, with the reference models as lines; train time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary["rows"] if "dev_rougeL" in r]
    names = [row_label(r) for r in rows]
    fig, (ax, ax_t) = plt.subplots(
        1, 2, figsize=(12, 0.45 * max(len(rows), 4) + 1.8), gridspec_kw={"width_ratios": [3, 1]}, sharey=True
    )
    y = range(len(rows))
    for offset, split, colour in ((-0.2, "dev", "tab:blue"), (0.2, "test", "tab:orange")):
        ax.barh(
            [i + offset for i in y],
            [r[f"{split}_rougeL"]["mean"] for r in rows],
            height=0.38,
            xerr=[r[f"{split}_rougeL"]["std"] for r in rows],
            color=colour,
            label=f"{split} Rouge-L",
            capsize=2,
        )
    refs = summary["references"]
    for name, style in (("teacher", "-"), ("student", ":"), ("cross_student", "--")):
        ax.axvline(
            refs[name]["test_rougeL"], color="black", linestyle=style, linewidth=1, label=f"{name} (test)"
        )
    ax.set_yticks(list(y), names)
    ax.invert_yaxis()
    ax.set_xlabel("Rouge-L F1 ×100 (mean ± std over seeds)")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    ax_t.barh(list(y), [r["train_s"] for r in rows], color="tab:gray", label="train")
    ax_t.barh(
        list(y),
        [r["eval_s"] for r in rows],
        left=[r["train_s"] for r in rows],
        color="tab:green",
        label="eval",
    )
    ax_t.set_xlabel("wall time per run (s)")
    ax_t.legend(loc="lower right", fontsize=8)
    ax_t.grid(axis="x", alpha=0.3)
    b = summary["budget"]
    fig.suptitle(
        f"Toy world ({summary['world'].get('size')}): {b['steps']} steps × batch {b['batch_size']}, "
        f"{len(b['seeds'])} seed(s), greedy decoding"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
