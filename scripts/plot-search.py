#!/usr/bin/env python3
"""Draws scripts/bench-search.sh's CURVES file as an SVG: for each worker count a panel, for each search the median
best-so-far true loss after each experiment (a line) and its quartiles (a band). Python's standard library only.

    python3 scripts/plot-search.py curves.csv docs/search-benchmark.svg
"""

import csv
import statistics
import sys
from collections import defaultdict

source, target = sys.argv[1:]
series = defaultdict(list)  # (search, workers, experiment) -> losses
for row in csv.DictReader(open(source)):
    if row["loss"] != "nan":
        series[(row["search"], int(row["workers"]), int(row["experiment"]))].append(float(row["loss"]))
searches = sorted({k[0] for k in series}, key=lambda s: ["greedy", "frontier"].index(s) if s in ("greedy", "frontier") else 9)
workers = sorted({k[1] for k in series})
last = max(k[2] for k in series)
top = max(statistics.quantiles(v, n=4)[2] if len(v) > 1 else v[0] for v in series.values())
colours = {"greedy": "#d62728", "frontier": "#1f77b4"}

width, height, margin = 320, 260, 50
out = [
    f'<svg xmlns="http://www.w3.org/2000/svg" width="{width * len(workers) + margin}" height="{height + 2 * margin + 30}" '
    'font-family="sans-serif" font-size="12">',
    '<rect width="100%" height="100%" fill="white"/>',
]
for p, w in enumerate(workers):
    x0, y0 = margin + p * width, margin
    pw, ph = width - 30, height

    def x(e):
        return x0 + pw * (e - 1) / max(last - 1, 1)

    def y(v):
        return y0 + ph * (1 - v / top)

    out.append(f'<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>')
    out.append(f'<text x="{x0 + pw / 2}" y="{y0 - 8}" text-anchor="middle">{w} worker{"s" if w > 1 else ""}</text>')
    for t in range(0, int(top) + 1, 10):
        out.append(f'<line x1="{x0}" x2="{x0 + pw}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="#eee"/>')
        if p == 0:
            out.append(f'<text x="{x0 - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{t}</text>')
    for e in range(0, last + 1, 10):
        if e >= 1:
            out.append(f'<text x="{x(e):.1f}" y="{y0 + ph + 16}" text-anchor="middle">{e}</text>')
    out.append(f'<text x="{x0 + pw / 2}" y="{y0 + ph + 34}" text-anchor="middle">experiments</text>')
    for s in searches:
        points = []
        for e in range(1, last + 1):
            v = series.get((s, w, e))
            if v:
                q = statistics.quantiles(v, n=4) if len(v) > 1 else [v[0]] * 3
                points.append((e, statistics.median(v), q[0], q[2]))
        band = [f"{x(e):.1f},{y(hi):.1f}" for e, _, _, hi in points] + [
            f"{x(e):.1f},{y(lo):.1f}" for e, _, lo, _ in reversed(points)
        ]
        out.append(f'<polygon points="{" ".join(band)}" fill="{colours.get(s, "#555")}" fill-opacity="0.15"/>')
        line = " ".join(f"{x(e):.1f},{y(m):.1f}" for e, m, _, _ in points)
        out.append(f'<polyline points="{line}" fill="none" stroke="{colours.get(s, "#555")}" stroke-width="2"/>')
for i, s in enumerate(searches):
    lx = margin + 10 + i * 300
    out.append(f'<line x1="{lx}" x2="{lx + 24}" y1="{margin + height + 62}" y2="{margin + height + 62}" '
               f'stroke="{colours.get(s, "#555")}" stroke-width="2"/>')
    out.append(f'<text x="{lx + 30}" y="{margin + height + 66}">{s}: median best (band: quartiles)</text>')
out.append(f'<text x="14" y="{margin + height / 2}" transform="rotate(-90 14 {margin + height / 2})" '
           'text-anchor="middle">true loss of the best</text>')
out.append("</svg>")
open(target, "w").write("\n".join(out) + "\n")
