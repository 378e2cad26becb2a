"""Plots for BENCHMARKS.md (a bench-only extra: matplotlib is never a runtime dependency)."""

from pathlib import Path
from statistics import median
from typing import Any

PLOT_DIR = Path(__file__).resolve().parent / "plots"


def _pyplot() -> Any:
    """matplotlib.pyplot on the file-only backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(plt: Any, fig: Any, filename: str) -> str:
    fig.tight_layout()
    PLOT_DIR.mkdir(exist_ok=True)
    fig.savefig(PLOT_DIR / filename, dpi=100)
    plt.close(fig)
    return f"bench/plots/{filename}"


def latency_cdf(series: dict[str, list[float]], title: str, filename: str) -> str | None:
    """A CDF of latencies per contender, written as PNG; the path relative to the repo, or None without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, values in series.items():
        ordered = sorted(values)
        if ordered:
            ax.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], label=name)
    ax.set_xscale("log")
    ax.set_xlabel("round trip, µs (log scale)")
    ax.set_ylabel("fraction of exchanges")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(plt, fig, filename)


def goodput_vs_loss(series: dict[str, dict[float, list[float]]], title: str, filename: str) -> str | None:
    """Median goodput (MB/s, min-max as error bars) against loss per contender; `series` maps a contender
    to {loss fraction: MB/s of each round}. The PNG's path relative to the repo, or None without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, by_loss in series.items():
        losses = sorted(by_loss)
        mids = [median(by_loss[loss]) for loss in losses]
        below = [mid - min(by_loss[loss]) for mid, loss in zip(mids, losses, strict=True)]
        above = [max(by_loss[loss]) - mid for mid, loss in zip(mids, losses, strict=True)]
        ax.errorbar([loss * 100 for loss in losses], mids, yerr=[below, above], marker="o", capsize=3, label=name)
    ax.set_yscale("log")
    plain = plt.FuncFormatter(lambda value, _: f"{value:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.set_xlabel("random loss each way, %")
    ax.set_ylabel("goodput, MB/s (log scale)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(plt, fig, filename)
