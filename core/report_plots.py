"""The figures of the HTML report (design §7), drawn with matplotlib into inline SVG strings.

Why matplotlib: it is well kept and widely installed, draws offline with no browser or JavaScript,
and its SVG backend writes text as ``<text>`` (``svg.fonttype: none``: no embedded glyphs, no font
files) that a page can inline, so the report stays one file that opens from a CI artifact.
It is imported only here, and this module only when an HTML report is written: ``mcomp --help``
and the other commands never pay for it.

Each ``*_figure`` function takes report parts and returns ``(title, svg)`` or ``None`` when the
report has nothing to draw for it.
"""

from __future__ import annotations

import io
import re

BEFORE, AFTER, BAND, FLOAT = "#9aa5b1", "#2b6cb0", "#c6f6d5", "#c53030"
_PROLOG = re.compile(r"^.*?(?=<svg)", re.S)  # the XML declaration and a DOCTYPE that points at w3.org
_METADATA = re.compile(r"\s*<metadata>.*?</metadata>", re.S)  # RDF with URLs; nothing a reader needs
_IDS = re.compile(r'(\bid="|\bhref="#|\burl\(#)')
MAX_BARS = 60  # per-layer figures beyond this show the first MAX_BARS and say so in the title


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def to_svg(fig, salt: str) -> str:
    """The figure as an ``<svg>`` element for inlining: no prolog, no metadata, text as text.
    ``salt`` (a name) makes the ids of clip paths and markers deterministic and distinct between the
    figures of a page."""
    import matplotlib

    plt = _plt()
    rc = {"svg.fonttype": "none", "svg.hashsalt": salt, "text.parse_math": False}
    try:
        with matplotlib.rc_context(rc):
            buf = io.StringIO()
            fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    finally:
        plt.close(fig)
    svg = _METADATA.sub("", _PROLOG.sub("", buf.getvalue(), count=1), count=1)
    # ids (figure_1, patch_3 …) repeat from figure to figure; in one page they must not
    return _IDS.sub(lambda m: f"{m.group(1)}{salt}-", svg)


def drawn(draw):
    """Runs a figure function with the report's style: text taken literally (a ``$`` in a node name is
    not TeX), small type. Text objects read these settings when they are made, so the whole drawing
    runs inside the context."""
    import functools

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        import matplotlib

        _plt()
        with matplotlib.rc_context({"text.parse_math": False, "font.size": 9}):
            return draw(*args, **kwargs)

    return wrapper


def new_figure(width: float, height: float, ncols: int = 1):
    fig, axes = _plt().subplots(1, ncols, figsize=(width, height), squeeze=False)
    for ax in axes[0]:
        ax.spines[["top", "right"]].set_visible(False)
    return fig, list(axes[0])


def _short(name, width: int = 28) -> str:
    from mcomp.report import clipped

    return clipped(name, width)


@drawn
def latency_figure(latency: dict | None):
    """p50 (bar) and p90 (whisker) of input and output, and the ratio against the A/A noise band."""
    if not latency or not latency.get("reference") or not latency.get("candidate"):
        return None
    fig, (ax, rx) = new_figure(9, 2.4, 2)
    ref, cand = latency["reference"], latency["candidate"]
    p50 = [ref["p50_ms"], cand["p50_ms"]]
    p90 = [ref.get("p90_ms") or p50[0], cand.get("p90_ms") or p50[1]]
    ax.barh(["input", "output"], p50, color=[BEFORE, AFTER],
            xerr=[[0, 0], [max(0.0, h - m) for h, m in zip(p90, p50)]], capsize=4)
    ax.invert_yaxis()
    ax.set_xlabel("ms per run (bar p50, whisker p90)")
    ax.set_title("latency")
    ratio, floor = latency.get("ratio"), latency.get("noise_floor")
    if floor:
        rx.axvspan(floor["p10"], floor["p90"], color=BAND, label=f"A/A noise p10–p90 ({floor['p10']:.2f}–{floor['p90']:.2f})")
    rx.axvline(1.0, color=BEFORE, linestyle="--", linewidth=1, label="no change")
    if ratio is not None:
        rx.plot([ratio], [0], "o", color=AFTER, markersize=9, label=f"output/input ×{ratio:.3f}")
    lo = min([ratio or 1, 1, floor["p10"] if floor else 1]) * 0.9
    hi = max([ratio or 1, 1, floor["p90"] if floor else 1]) * 1.1
    rx.set_xlim(lo, hi)
    rx.set_yticks([])
    rx.spines["left"].set_visible(False)
    rx.set_xlabel("latency ratio (lower is faster)")
    rx.set_title("ratio against the A/A noise band")
    rx.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=1, frameon=False, fontsize=8)
    return "latency", to_svg(fig, "latency")


@drawn
def size_figure(before: dict, after: dict):
    """File bytes, parameters, non-zeros and MACs of the output as a share of the input's."""
    keys = [("bytes", "file bytes"), ("parameters", "parameters"), ("nonzero_parameters", "non-zero parameters"),
            ("macs", "MACs"), ("nodes", "nodes")]
    rows = [(label, before.get(k), after.get(k)) for k, label in keys if before.get(k) and after.get(k) is not None]
    if not rows:
        return None
    fig, (ax,) = new_figure(7, 0.45 * len(rows) + 0.9)
    labels = [r[0] for r in rows]
    shares = [r[2] / r[1] for r in rows]
    ax.barh(labels, [1.0] * len(rows), color=BEFORE, height=0.8, label="input (= 1)")
    ax.barh(labels, shares, color=AFTER, height=0.45, label="output")
    for y, (label, b, a) in enumerate(rows):
        ax.annotate(f"{b:,} → {a:,}  (×{a / b:.3f})", (max(1.0, a / b), y), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(1.0, *shares) * 1.9)
    ax.set_xlabel("output as a share of the input")
    ax.set_title("size, parameters and MACs, before and after")
    ax.legend(loc="lower right", frameon=False, fontsize=8)
    return "size", to_svg(fig, "size")


@drawn
def ops_figure(before: dict | None, after: dict | None):
    """Nodes by op type, input beside output."""
    if not before and not after:
        return None
    before, after = before or {}, after or {}
    names = sorted(set(before) | set(after), key=lambda n: -max(before.get(n, 0), after.get(n, 0)))[:25]
    fig, (ax,) = new_figure(7, 0.28 * len(names) + 1.0)
    ys = range(len(names))
    ax.barh([y - 0.2 for y in ys], [before.get(n, 0) for n in names], height=0.4, color=BEFORE, label="input")
    ax.barh([y + 0.2 for y in ys], [after.get(n, 0) for n in names], height=0.4, color=AFTER, label="output")
    ax.set_yticks(list(ys), names)
    ax.invert_yaxis()
    ax.set_xlabel("nodes")
    ax.set_title("nodes by op type" + (" (the 25 most common)" if len(set(before) | set(after)) > 25 else ""))
    ax.legend(loc="lower right", frameon=False, fontsize=8)
    return "ops", to_svg(fig, "ops")


@drawn
def prune_figure(changes: dict, salt: str):
    """Structured: channels kept of each group. Unstructured: the sparsity of each layer."""
    groups = changes.get("groups")
    if groups and isinstance(groups[0], dict) and "channels_before" in groups[0]:
        shown = groups[:MAX_BARS]
        fig, (ax,) = new_figure(8, 0.22 * len(shown) + 1.0)
        labels = [_short(g.get("chain") or g.get("id")) for g in shown]
        ys = list(range(len(shown)))
        ax.barh(ys, [g["channels_before"] for g in shown], color=BEFORE, height=0.8, label="before")
        ax.barh(ys, [g["channels_after"] for g in shown], color=[FLOAT if g.get("reason") else AFTER for g in shown],
                height=0.45, label="kept")
        ax.set_yticks(ys, labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("channels (red: group left whole)")
        more = f", first {MAX_BARS} of {len(groups)}" if len(groups) > MAX_BARS else ""
        ax.set_title(f"prune: channels kept per group{more}")
        ax.legend(loc="lower right", frameon=False, fontsize=8)
        return "prune", to_svg(fig, salt)
    layers = changes.get("layers")
    if isinstance(layers, list) and layers and isinstance(layers[0], dict) and "sparsity" in layers[0]:
        shown = layers[:MAX_BARS]
        fig, (ax,) = new_figure(8, 0.22 * len(shown) + 1.0)
        ys = list(range(len(shown)))
        ax.barh(ys, [r["sparsity"] for r in shown], color=AFTER)
        ax.set_yticks(ys, [_short(r.get("node") or r.get("tensor")) for r in shown], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of weights set to zero")
        more = f", first {MAX_BARS} of {len(layers)}" if len(layers) > MAX_BARS else ""
        ax.set_title(f"prune: sparsity per layer{more}")
        return "prune", to_svg(fig, salt)
    return None


@drawn
def explain_figure(rows: list[dict] | None, salt: str):
    """``quantize --explain``: the SQNR each layer keeps when quantized; float fallbacks in red."""
    rows = [r for r in rows or [] if isinstance(r, dict) and r.get("node") is not None]
    if not rows:
        return None
    shown = rows[:MAX_BARS]
    finite = [r["sqnr_db"] for r in shown if r.get("sqnr_db") is not None]
    top = max(max(finite, default=60.0), 1.0) * 1.1
    fig, (ax,) = new_figure(8, 0.24 * len(shown) + 1.0)
    ys = list(range(len(shown)))
    is_float = [str(r.get("status", "")).startswith("float") for r in shown]
    ax.barh(ys, [top if r.get("sqnr_db") is None else r["sqnr_db"] for r in shown],
            color=[FLOAT if f else AFTER for f in is_float])
    for y, (r, f) in enumerate(zip(shown, is_float)):
        text = ("∞ dB" if r.get("sqnr_db") is None else f"{r['sqnr_db']:.1f} dB") + (f"  {r['status']}" if f else "")
        ax.annotate(text, (top if r.get("sqnr_db") is None else r["sqnr_db"], y), xytext=(3, 0),
                    textcoords="offset points", va="center", fontsize=7, color=FLOAT if f else "black")
    ax.set_yticks(ys, [_short(f"{r['node']} ({r.get('op_type', '?')})", 36) for r in shown], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, top * 1.45)
    ax.set_xlabel("SQNR of the layer's output when quantized, dB (higher is safer; red: kept in float)")
    more = f", first {MAX_BARS} of {len(rows)}" if len(rows) > MAX_BARS else ""
    ax.set_title(f"quantize --explain: sensitivity per layer{more}")
    return "explain", to_svg(fig, salt)


@drawn
def history_figure(history: list[dict] | None, salt: str):
    """Distillation: training and validation loss, and accuracy (training and validation), by epoch."""
    rows = [r for r in history or [] if isinstance(r, dict) and "epoch" in r]
    if not rows:
        return None
    losses = [k for k in ("loss", "val_loss") if any(r.get(k) is not None for r in rows)]
    scores = sorted({k for r in rows for k in r if k not in ("epoch", "lr", "seconds", *losses)
                     and "loss" not in k and isinstance(r.get(k), (int, float))})
    if not losses and not scores:
        return None
    panels = [(keys, title) for keys, title in ((losses, "loss"), (scores, "accuracy and agreement")) if keys]
    fig, axes = new_figure(9, 2.6, len(panels))
    for ax, (keys, title) in zip(axes, panels):
        for key in keys:
            pts = [(r["epoch"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if pts:
                ax.plot(*zip(*pts), marker="o", markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_title(f"distill: {title}")
        ax.legend(frameon=False, fontsize=8)
    return "history", to_svg(fig, salt)
