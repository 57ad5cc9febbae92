"""``--plot``: a PNG of the speed-ups over the reference (matplotlib)."""
from __future__ import annotations

import os

from .runner import Results


def plot_speedups(results: Results, path: str) -> None:
    """A PNG with one panel per precision: speed-up over the reference per batch size, one bar per
    (model, implementation)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    s = results.settings
    fig, axes = plt.subplots(1, len(s.dtypes), figsize=(5 + 2 * len(s.batches), 4), squeeze=False)
    series = [(m, impl) for m in s.models for impl in s.implementations[1:]]
    width = 0.8 / max(len(series), 1)
    for ax, dtype in zip(axes[0], s.dtypes):
        for k, (m, impl) in enumerate(series):
            if not s.runs(impl, dtype):
                continue
            ratios = [results.speedup(m, dtype, b, impl) for b in s.batches]
            ratios = [float("nan") if r is None else r for r in ratios]  # a failed peer's cell: no bar
            ax.bar([i + k * width for i in range(len(s.batches))], ratios, width, label=f"{m} {impl}")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(s.batches))])
        ax.set_xticklabels([str(b) for b in s.batches])
        ax.set_xlabel("batch size")
        ax.set_ylabel("speed-up vs eager reference (x)")
        ax.set_title(f"{dtype.upper()} on {s.device}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)

