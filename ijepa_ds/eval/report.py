"""Evaluation reports: a JSON file (everything) and a markdown table (for people) per command."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def format_value(value: Any) -> str:
    """Table cell text: accuracies with 2 decimals, small/large floats in %g, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if math.isnan(value):
        return "nan"
    if value != 0.0 and (abs(value) < 0.01 or abs(value) >= 1e5):
        return f"{value:g}"
    return f"{value:.2f}"


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """GitHub markdown table of ``rows``; columns default to the keys in first-seen order."""
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(format_value(row.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_report(
    out_dir: str | Path,
    name: str,
    header: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.json`` and ``<out_dir>/<name>.md``; returns both paths.

    ``header``: what was evaluated and how (source, dataset, settings), listed above the table;
    ``rows``: the result table; ``extra``: further JSON-only data (e.g. the probe sweep).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    payload = {"name": name, "written": stamp, **header, "results": list(rows), **(extra or {})}
    json_path = out / f"{name}.json"
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    md = [f"# ijepa-ds eval {name}", ""]
    md += [f"- {key}: {_inline(value)}" for key, value in header.items()]
    md += [f"- written: {stamp}", "", markdown_table(rows, columns)]
    md_path = out / f"{name}.md"
    md_path.write_text("\n".join(md), encoding="utf-8")
    return json_path, md_path


def _inline(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_inline(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    return "-" if value is None else str(value)  # header values in full, unlike table cells
