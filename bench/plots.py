"""Plots for BENCHMARKS.md (a bench-only extra: matplotlib is never a runtime dependency)."""

from pathlib import Path

PLOT_DIR = Path(__file__).resolve().parent / "plots"


def latency_cdf(series: dict[str, list[float]], title: str, filename: str) -> str | None:
    """A CDF of latencies per contender, written as PNG; the path relative to the repo, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    PLOT_DIR.mkdir(exist_ok=True)
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
    fig.tight_layout()
    path = PLOT_DIR / filename
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"bench/plots/{filename}"
