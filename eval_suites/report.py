"""Shared report writer for every benchmark: machine, versions, tables, plots, JSON.

Benchmarks are not tests: each suite computes its figures, then calls `write_report`, which
writes `<out>/report.md`, `<out>/results.json` and any matplotlib figures next to them.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.model_cache import package_versions as installed_versions

DEFAULT_PACKAGES = (
    "codehop", "torch", "numpy", "faiss-cpu", "bm25s", "rank-bm25", "sentence-transformers",
    "transformers", "tree-sitter", "tree-sitter-language-pack",
)


def machine_info() -> dict[str, Any]:
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "os": platform.platform(),
        "gpu": "none",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def package_versions(names: tuple[str, ...] = DEFAULT_PACKAGES) -> dict[str, str]:
    """Installed versions of the packages a report names ("absent" for a missing one)."""
    return installed_versions(*names)


def markdown_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """Render rows (dicts) as a markdown table; floats get 4 significant decimals."""
    if not rows:
        return "_no rows_\n"
    columns = columns or list(rows[0].keys())

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


@dataclass
class Report:
    """A benchmark report under construction: sections of markdown plus raw results."""

    title: str
    settings: dict[str, Any] = field(default_factory=dict)
    sections: list[str] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)

    def add(self, heading: str, body: str) -> None:
        self.sections.append(f"## {heading}\n\n{body.rstrip()}\n")

    def add_table(self, heading: str, rows: list[dict[str, Any]], note: str = "") -> None:
        self.add(heading, markdown_table(rows) + (f"\n{note}\n" if note else ""))

    def add_figure(self, figure, out_dir: Path, name: str, caption: str) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        figure.savefig(out_dir / name, dpi=110, bbox_inches="tight")
        self.figures.append(name)
        self.sections.append(f"![{caption}]({name})\n")

    def write(self, out_dir: Path) -> Path:
        out_dir.mkdir(parents=True, exist_ok=True)
        machine, versions = machine_info(), package_versions()
        head = [f"# {self.title}\n"]
        head.append("Machine: " + ", ".join(f"{k}: {v}" for k, v in machine.items()) + "\n")
        head.append("Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + "\n")
        if self.settings:
            head.append("Settings: `" + json.dumps(self.settings, default=str) + "`\n")
        path = out_dir / "report.md"
        path.write_text("\n".join(head + self.sections))
        payload = {"title": self.title, "machine": machine, "versions": versions,
                   "settings": self.settings, "results": self.results}
        (out_dir / "results.json").write_text(json.dumps(payload, indent=2, default=str))
        return path
