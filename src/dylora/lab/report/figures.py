"""Figures as files: matplotlib without a display, and files whose bytes depend on their content alone
(committed plots regenerate byte-identical: no date, no random SVG ids)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

# what matplotlib would otherwise stamp into each file: the date (SVG), its version (PNG, SVG)
METADATA = {".svg": {"Date": None, "Creator": None}, ".png": {"Software": None}}


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Save ``fig`` to ``path`` (.png or .svg; the caller closes it): the same figure gives the same bytes."""
    with plt.rc_context({"svg.hashsalt": "dylora", "svg.id": None}):
        fig.savefig(path, dpi=100, bbox_inches="tight", metadata=METADATA.get(Path(path).suffix))
    return Path(path)
