"""Render the quality benchmark's summary (bench/quality.py) as Markdown tables and a PNG plot.

Tables: the convergence table (every row, best-dev checkpoint scored on test), the per-epoch dev curves of the
SFT rows, the equal-wall-time comparison, and the success criteria (differences against one pooled std).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

COLUMNS = (
    "config",
    "method",
    "student",
    "seeds",
    "epochs",
    "best epoch",
    "best dev Rouge-L",
    "test Rouge-L",
    "test EM",
    "train s",
    "status",
)
STUDENT_LABEL = {"student": "same vocab", "cross_student": "cross vocab"}


def _pm(value: dict[str, float] | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value['mean']:.{digits}f} ± {value['std']:.{digits}f}"


def row_label(row: dict[str, Any]) -> str:
    """Row name; resolved rows also say what they were resolved from."""
    source = (row.get("info") or {}).get("source_row")
    if row["name"].startswith("onpolicy") and source:
        return f"{row['name']} = {source}"
    if "walltime" in row["name"] and source:
        return f"{row['name']} ({source})"
    return row["name"]


def method_label(row: dict[str, Any]) -> str:
    o = row["overrides"]
    details = []
    if o.get("distill.divergence") and row["method"] not in {"uld", "mined"}:
        details.append(o["distill.divergence"])
    if row["method"] == "dskd":
        details.append(f"{o.get('distill.dskd_variant', 'v2')} {o.get('distill.projector_init', 'ideal')}")
    for key, label in (
        ("distill.temperature", "τ"),
        ("distill.kd_rate", "kd_rate "),
        ("distill.on_policy_ratio", "on-policy "),
    ):
        if key in o:
            details.append(f"{label}{o[key]}")
    if o.get("distill.temperature_scaling") == "tau2":
        details.append("×τ²")
    return row["method"] + (f" ({', '.join(details)})" if details else "")


def table_rows(summary: dict[str, Any]) -> list[list[str]]:
    """The table as cells: the reference models first, then one line per configuration."""
    refs = summary["references"]
    cells = []
    for name, label in (
        ("teacher", "teacher"),
        ("student", "student before training"),
        ("cross_student", "cross student before training"),
    ):
        r = refs.get(name)
        if r is None:
            continue
        cells.append(
            [
                label,
                "-",
                STUDENT_LABEL.get(name, "teacher"),
                "1",
                "-",
                "-",
                f"{r['dev_rougeL']:.1f}",
                f"{r['test_rougeL']:.1f}",
                f"{r['test_em']:.1f}",
                "-",
                "reference",
            ]
        )
    for row in summary["rows"]:
        ok = "test_rougeL" in row
        cells.append(
            [
                row_label(row),
                method_label(row),
                STUDENT_LABEL[row["student"]],
                str(row["seeds"]),
                f"{row['epochs']:g}" if ok else "–",
                _pm(row.get("best_epoch")),
                _pm(row.get("dev_rougeL")),
                _pm(row.get("test_rougeL")),
                _pm(row.get("test_em")),
                f"{row['wall_s']:.0f}" if ok else "–",
                row["status"].replace("|", "/"),
            ]
        )
    return cells


def markdown_table(summary: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(summary)]
    return "\n".join(lines)


def curve_table(
    summary: dict[str, Any], names: tuple[str, ...] = ("sft", "sft_2x_epochs", "sft_cross")
) -> str:
    """Dev Rouge-L (greedy, mean ± std over seeds) after each epoch, for the named rows."""
    rows = [r for r in summary["rows"] if r["name"] in names and r.get("curve")]
    if not rows:
        return ""
    n = max(len(r["curve"]) for r in rows)
    lines = ["| epoch | " + " | ".join(f"{r['name']} dev Rouge-L" for r in rows) + " |"]
    lines.append("|" + "---|" * (len(rows) + 1))
    for i in range(n):
        cells = [_pm(r["curve"][i]["dev_rougeL"]) if i < len(r["curve"]) else "–" for r in rows]
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare(a: dict[str, Any], b: dict[str, Any], metric: str = "test_rougeL") -> dict[str, float]:
    """a − b on `metric`, the pooled std sqrt((s_a² + s_b²) / 2), and whether a beats b by more than it."""
    diff = a[metric]["mean"] - b[metric]["mean"]
    pooled = math.sqrt((a[metric]["std"] ** 2 + b[metric]["std"] ** 2) / 2)
    return {"diff": diff, "pooled_std": pooled, "beats": diff > pooled}


def _by_name(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in summary["rows"] if "test_rougeL" in r}


def _best(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The row with the best mean dev Rouge-L (dev picks, test reports)."""
    return max(rows, key=lambda r: r["dev_rougeL"]["mean"], default=None)


def criteria(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's success criteria, each a comparison of two rows picked on dev and judged on test."""
    rows = _by_name(summary)
    same = [r for r in rows.values() if r["student"] == "student" and "walltime" not in r["name"]]
    cross = [r for r in rows.values() if r["student"] == "cross_student" and "walltime" not in r["name"]]
    off = [r for r in same if not r["name"].startswith("onpolicy")]
    vanilla = _best([r for r in off if r["method"] == "vanilla_kd"])
    dskd = _best([r for r in off if r["method"] == "dskd"])
    cross_dskd = _best(
        [r for r in cross if r["method"] in {"dskd_eta", "dskd_cma"} and "onpolicy" not in r["name"]]
    )
    checks = []

    def add(claim: str, a: dict[str, Any] | None, b: dict[str, Any] | None) -> None:
        if a is not None and b is not None:
            checks.append({"claim": claim, "a": a["name"], "b": b["name"], **compare(a, b)})

    add("vanilla KD beats SFT", vanilla, rows.get("sft"))
    add("DSKD beats vanilla KD", dskd, vanilla)
    add("DSKD beats SFT", dskd, rows.get("sft"))
    for other in ("sft_cross", "uld", "mined"):
        add(f"cross DSKD beats {other}", cross_dskd, rows.get(other))
    return checks


def criteria_table(summary: dict[str, Any]) -> str:
    checks = criteria(summary)
    if not checks:
        return ""
    lines = [
        "| claim | row a (best on dev) | row b | test a − b | pooled std | holds |",
        "|---|---|---|---|---|---|",
    ]
    for c in checks:
        lines.append(
            f"| {c['claim']} | {c['a']} | {c['b']} | {c['diff']:+.1f} | {c['pooled_std']:.1f} | "
            f"{'yes' if c['beats'] else 'no'} |"
        )
    return "\n".join(lines)


def walltime_table(summary: dict[str, Any]) -> str:
    """Each wall-time SFT row beside the KD row whose wall time it was given."""
    rows = _by_name(summary)
    lines = [
        "| KD row | KD epochs | KD wall s | KD test Rouge-L | SFT epochs in that time | SFT wall s | SFT test "
        "Rouge-L | SFT − KD | pooled std |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    found = False
    for r in summary["rows"]:
        source = (r.get("info") or {}).get("source_row")
        if "walltime" not in r["name"] or r["name"] not in rows or source not in rows:
            continue
        found = True
        kd, c = rows[source], compare(r, rows[source])
        lines.append(
            f"| {source} | {kd['epochs']:g} | {kd['wall_s']:.0f} | {_pm(kd['test_rougeL'])} | {r['epochs']:g} | "
            f"{r['wall_s']:.0f} | {_pm(r['test_rougeL'])} | {c['diff']:+.1f} | {c['pooled_std']:.1f} |"
        )
    return "\n".join(lines) if found else ""


def alignment_table(summary: dict[str, Any]) -> str:
    """Mean share of aligned positions (and the like) the cross-vocabulary distillers logged per step."""
    rows = [r for r in summary["rows"] if r.get("alignment")]
    if not rows:
        return ""
    names = sorted({k for r in rows for k in r["alignment"]})
    lines = ["| config | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for r in rows:
        cells = [f"{r['alignment'][k]:.3f}" if k in r["alignment"] else "–" for k in names]
        lines.append(f"| {row_label(r)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_markdown(summary: dict[str, Any], path: Path) -> None:
    b, m, n = summary["budget"], summary["machine"], summary["eval_records"]
    fills = ", ".join(f"{k} {v:.0f} s" for k, v in summary.get("cache_fill_s", {}).items()) or "none"
    text = [
        "# Quality benchmark results",
        "",
        f"Command: `{summary.get('command', 'bench/quality.py')}`; toy world `{summary['world_path']}` "
        f"(version {summary['world'].get('version')}, size {summary['world'].get('size')}); "
        f"{summary['bench_seconds'] / 60:.1f} min on {m['platform']}, {m['cpu_count']} CPUs, "
        f"{m['jobs']} runs at a time with {m['torch_threads']} torch thread(s) each, load average before/after "
        f"{m['load_average_before']} / {m['load_average_after']}.",
        "",
        f"Budget per run: {b['epochs']} epochs × batch {b['batch_size']} over the student's training records "
        f"(at most {b['train_examples']}), lr {b['lr']}, warmup {b['warmup_ratio']}, cosine; kd_rate "
        f"{b['kd_rate']}, τ {b['temperature']} unless the row says otherwise. Dev Rouge-L (greedy, {n['dev']} dev "
        f"records) after every epoch; the best dev epoch's checkpoint is scored on {n['test']} test records. Rouge-L F1 ×100 (best over references) and exact match (EM, %), mean ± "
        f"std (ddof=0) over seeds {list(b['seeds'])}. train s: mean seconds per run without the dev generation, "
        f"plus for KD rows the one-off teacher cost (teacher cache fill: {fills}; SeqKD: its generation).",
        "",
        markdown_table(summary),
        "",
    ]
    for title, body in (
        ("Dev Rouge-L per epoch", curve_table(summary)),
        ("Equal wall time", walltime_table(summary)),
        ("Success criteria (test, rows picked on dev)", criteria_table(summary)),
        ("Alignment figures (means over training steps)", alignment_table(summary)),
    ):
        if body:
            text += [f"## {title}", "", body, ""]
    path.write_text("\n".join(text))


def write_plot(summary: dict[str, Any], path: Path) -> None:
    """Left: dev Rouge-L per epoch (mean over seeds) of every row; right: test Rouge-L of the best dev checkpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary["rows"] if "test_rougeL" in r]
    fig, (ax_c, ax) = plt.subplots(
        1, 2, figsize=(14, 0.4 * max(len(rows), 8) + 2), gridspec_kw={"width_ratios": [1.2, 1]}
    )
    for r in rows:
        if "walltime" in r["name"]:
            continue
        xs = [i + 1 for i in range(len(r["curve"]))]
        ys = [c["dev_rougeL"]["mean"] for c in r["curve"]]
        bold = r["method"] == "sft"
        ax_c.plot(
            xs,
            ys,
            marker="o",
            markersize=3,
            linewidth=2.5 if bold else 1,
            linestyle="-" if r["student"] == "student" else "--",
            label=row_label(r),
        )
    ax_c.set_xlabel("epoch")
    ax_c.set_ylabel("dev Rouge-L (greedy, mean over seeds)")
    ax_c.set_title("dev Rouge-L per epoch (solid: same vocab, dashed: cross vocab)")
    ax_c.grid(alpha=0.3)
    if ax_c.get_legend_handles_labels()[0]:
        ax_c.legend(fontsize=7, ncol=2)

    names = [row_label(r) for r in rows]
    y = range(len(rows))
    ax.barh(
        list(y),
        [r["test_rougeL"]["mean"] for r in rows],
        xerr=[r["test_rougeL"]["std"] for r in rows],
        color=["tab:blue" if r["student"] == "student" else "tab:orange" for r in rows],
        capsize=2,
    )
    refs = summary["references"]
    for name, style in (("teacher", "-"), ("student", ":"), ("cross_student", "--")):
        if name in refs:
            ax.axvline(refs[name]["test_rougeL"], color="black", linestyle=style, linewidth=1, label=name)
    ax.set_yticks(list(y), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("test Rouge-L of the best dev checkpoint (mean ± std over seeds)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    b = summary["budget"]
    fig.suptitle(
        f"Toy world v{summary['world'].get('version')} ({summary['world'].get('size')}): {b['epochs']} epochs, "
        f"best dev epoch, {len(b['seeds'])} seed(s), greedy decoding"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
