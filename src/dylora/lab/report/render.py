"""Rendering: tables as Markdown, CSV and LaTeX, with the list of missing or unfinished runs."""

from __future__ import annotations

import math
from pathlib import Path

from dylora.lab import paper
from dylora.lab.report.experiments import AVG, SOURCE_LABELS, Experiment, Issue, method_label
from dylora.lab.report.tables import Table


def _fmt(mean: float, std: float, source: str) -> str:
    if not math.isfinite(mean):
        return "–"
    if source == "delta":
        return f"{mean:+.2f}"
    return f"{mean:.2f} ± {std:.2f}" if math.isfinite(std) else f"{mean:.2f}"


def _grid(table: Table) -> tuple[list[str], list[list[tuple[str, bool]]]]:
    """Header and rows of (text, bold) cells, one row per method, row and source."""
    columns = table.tasks + ([AVG] if table.avg else [])
    header = ["Method", "Row", "Source"] + [table.labels.get(t, paper.TASKS.get(t, t)) for t in table.tasks]
    header += ["Avg"] if table.avg else []
    rows = []
    for (method, row, _key, source), g in table.cells.groupby(["method", "row", "key", "source"], sort=False):
        by_task = g.set_index(table.column_field)
        cells = [(method_label(method), False), (str(row), False), (SOURCE_LABELS[source], False)]
        for t in columns:
            if t in by_task.index:
                c = by_task.loc[t]
                cells.append((_fmt(c["mean"], c["std"], source), bool(c["best"])))
            else:
                cells.append(("–", False))
        rows.append(cells)
    return header, rows


def markdown_table(header: list[str], rows: list[list[tuple[str, bool]]]) -> str:
    def line(cells: list[str]) -> str:
        # One line per row: multi-line YAML errors are folded, pipes escaped.
        return "| " + " | ".join(" ".join(c.split()).replace("|", "\\|") for c in cells) + " |"
    body = [line([f"**{t}**" if b else t for t, b in r]) for r in rows]
    return "\n".join([line(header), line(["---"] * len(header))] + body) + "\n"


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}


def tex_escape(text: str) -> str:
    escaped = "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)
    for char, tex in (("±", r"$\pm$"), ("Δ", r"$\Delta$"), ("−", "$-$"), ("×", r"$\times$"), ("–", "--")):
        escaped = escaped.replace(char, tex)  # plain pdflatex has no glyphs for these
    return escaped


def latex_table(header: list[str], rows: list[list[tuple[str, bool]]], caption: str, notes: list[str]) -> str:
    def line(cells: list[tuple[str, bool]]) -> str:
        return " & ".join(rf"\textbf{{{tex_escape(t)}}}" if b else tex_escape(t) for t, b in cells) + r" \\"
    spec = "lll" + "r" * (len(header) - 3)
    return "\n".join([
        r"\begin{table}[ht]", r"\centering", rf"\caption{{{tex_escape(caption)}}}",
        rf"\begin{{tabular}}{{{spec}}}", r"\hline", line([(h, False) for h in header]), r"\hline",
        *(line(r) for r in rows), r"\hline", r"\end{tabular}",
        r"\par\footnotesize " + r" \par ".join(tex_escape(n) for n in notes), r"\end{table}", "",
    ])


def issues_markdown(issues: list[Issue]) -> str:
    head = "## Missing or unfinished runs\n\n"
    if not issues:
        return head + "None: every task × method × seed in the grid finished with all ranks.\n"
    rows = [[(i.task, False), (i.method, False), ("" if i.seed is None else str(i.seed), False),
             (i.status, False), (i.detail, False)] for i in issues]
    return head + markdown_table(["Task", "Method", "Seed", "Status", "Detail"], rows)


def _all_issues(exp: Experiment, extra: list[Issue]) -> list[Issue]:
    return list(dict.fromkeys(exp.issues + extra))  # de-duplicated, order kept


def write_table(table: Table, exp: Experiment, dest: Path) -> list[Path]:
    header, rows = _grid(table)
    notes = table.notes
    body = markdown_table(header, rows) if rows else "No finished run has metrics for this table.\n"
    md = f"# {table.title}\n\n{body}\n" + "".join(f"- {n}\n" for n in notes)
    md += "\n" + issues_markdown(_all_issues(exp, table.issues))
    paths = [dest / f"{table.name}.{ext}" for ext in ("md", "csv", "tex")]
    paths[0].write_text(md)
    table.cells[table.csv_columns].to_csv(paths[1], index=False)
    paths[2].write_text(latex_table(header, rows, table.title, notes))
    return paths
