"""The sweep's picture: accuracy vs latency (one point per model) beside the per-stage latency
distributions, as SVG and PNG (matplotlib, Agg; no display needed).

Left: x = pipeline latency p50 in ms (a bar to p99), y = converted mAP; the best row within
the accuracy budget is a star, a row whose conversion failed its accuracy gate (or is over the
budget) a red cross, a row without a measured mAP is drawn on the x axis (hollow). Right: one
box plot per stage (preprocess, inference, postprocess), one box per model, in ms.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

STAGES = ("preprocess", "inference", "postprocess")
TITLE_LEFT = "accuracy vs latency"
X_LABEL = "pipeline latency p50 (ms), bar to p99"
Y_LABEL = "mAP (converted model)"


def _label(row: Mapping[str, Any]) -> str:
    ran = row.get("precision_run")
    extra = f" ({ran})" if ran and ran != row.get("precision") else ""
    return f"{row['name']}: {row.get('backend')} {row.get('precision')}{extra}"


def draw(rows: Sequence[Mapping[str, Any]], samples: Mapping[str, Mapping[str, Sequence[float]]],
         best: str | None, svg_path: str, png_path: str, title: str = "", budget: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matplotlib.rcParams["svg.fonttype"] = "none"  # SVG text stays text: searchable, selectable

    measured = [r for r in rows if r.get("p50_ms") is not None]
    fig = plt.figure(figsize=(13, 6.5), dpi=100)
    grid = fig.add_gridspec(len(STAGES), 2, width_ratios=(1.25, 1), hspace=0.55, wspace=0.28)
    ax = fig.add_subplot(grid[:, 0])
    x_span = max([r["p99_ms"] for r in measured] or [1.0])
    maps = [float(r["mAP"]) for r in measured if r.get("mAP") is not None]
    lo, hi = (min(maps), max(maps)) if maps else (0.0, 1.0)
    pad = max(0.02, (hi - lo) * 0.25)
    bottom = max(0.0, lo - 2 * pad) if maps else 0.0
    # rows without a measured mAP (verify disabled) are stacked in a strip at the bottom
    no_map = [r["name"] for r in measured if r.get("mAP") is None]
    strip = (lo - bottom) if maps and bottom < lo - pad else (pad if maps else 1.0)
    placed: list[tuple[float, float]] = []
    for r in measured:
        has_map = r.get("mAP") is not None
        y = float(r["mAP"]) if has_map else bottom + strip * (no_map.index(r["name"]) + 0.5) / (len(no_map) + 0.5)
        over = not r.get("within_budget", True)  # the sweep step's verdict
        style = dict(marker="*", s=260, color="tab:green", zorder=4) if r["name"] == best else \
            dict(marker="x", s=90, color="tab:red", zorder=3) if over else \
            dict(marker="o", s=60, color="tab:blue", zorder=3)
        if not has_map and style["marker"] == "o":
            style.update(facecolors="none", edgecolors=style.pop("color"))
        ax.scatter([r["p50_ms"]], [y], **style)
        ax.plot([r["p50_ms"], r["p99_ms"]], [y, y], color="0.6", lw=1.5, zorder=2)
        drop = f", drop {r['mapDrop']:+.3f}" if r.get("mapDrop") is not None else ("" if has_map else ", no mAP")
        near = sum(1 for px, py in placed if abs(px - r["p50_ms"]) < 0.15 * x_span and abs(py - y) < 0.01)
        placed.append((r["p50_ms"], y))  # stack the labels of points that lie close together
        ax.annotate(f"{_label(r)}{drop}", (r["p50_ms"], y), textcoords="offset points",
                    xytext=(6, 6 + 12 * near), fontsize=8)
    ax.set_xlabel(X_LABEL)
    ax.set_ylabel(Y_LABEL if maps else Y_LABEL + ": not measured (verify disabled)")
    ax.set_title(TITLE_LEFT + (f" (budget: drop <= {budget})" if budget is not None else ""))
    ax.grid(True, alpha=0.3)
    ax.set_ylim(bottom, min(1.0, hi + pad) if maps else 1.0)
    if not maps:
        ax.set_yticks([])
    ax.set_xlim(0, x_span * 1.45)
    legend = [("*", "tab:green", "best within budget"), ("o", "tab:blue", "within budget"),
              ("x", "tab:red", "accuracy gate failed / over budget")]
    for marker, color, text in legend:
        ax.scatter([], [], marker=marker, color=color, label=text)
    ax.legend(loc="best", fontsize=8)

    names = [r["name"] for r in measured]
    for i, stage in enumerate(STAGES):
        sax = fig.add_subplot(grid[i, 1])
        data = [list(samples.get(n, {}).get(stage) or [0.0]) for n in names]
        sax.boxplot(data, vert=False, showfliers=False)
        sax.set_yticks(range(1, len(names) + 1), names, fontsize=7)
        sax.set_title(f"{stage} latency (ms)", fontsize=9)
        sax.tick_params(axis="x", labelsize=7)
        sax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(title or "edgetune sweep", fontsize=11)
    fig.savefig(svg_path, format="svg", bbox_inches="tight")
    fig.savefig(png_path, format="png", bbox_inches="tight")
    plt.close(fig)
