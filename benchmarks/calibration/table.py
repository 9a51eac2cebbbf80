"""Markdown table of measure.py reports, one column group per pool.

    python benchmarks/calibration/table.py docs/calibration/pool.json docs/calibration/pool-alt.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    paths = [Path(p) for p in (argv if argv is not None else sys.argv[1:])]
    reports = [json.loads(p.read_text()) for p in paths]
    labels = list(dict.fromkeys(l for r in reports for l in r["candidates"]))
    head = "| router (k = 1) |"
    rule = "|---|"
    for p, r in zip(paths, reports):
        name = f"{p.stem} ({(r.get('recipe') or {}).get('name', '?')}, {len(r['adapters'])} adapters)"
        head += f" {name}: own first | acc. in pool | acc. out of pool |"
        rule += "---:|---:|---:|"
    lines = [head, rule]

    def fmt(v):
        return "" if v is None else f"{v:.3f}"

    row = "| oracle (each prompt's own adapter) |"
    for r in reports:
        row += f" 1.000 | {fmt(r.get('oracle_accuracy'))} | |"
    lines.append(row)
    row = "| base model (no adapter) |"
    for r in reports:
        row += f" | {fmt(r.get('base_accuracy_in_pool'))} | {fmt(r.get('base_accuracy_out_of_pool'))} |"
    lines.append(row)
    for label in labels:
        row = f"| {label} |"
        for r in reports:
            c = r["candidates"].get(label)
            if c is None:
                row += " | | |"
                continue
            row += f" {fmt(c['own_first'])} | {fmt(c.get('accuracy_in_pool'))} | {fmt(c.get('accuracy_out_of_pool'))} |"
        lines.append(row)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
