"""What each client got: per-client label counts as a table and a plot, saved with every run."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fedlora.errors import ConfigError

MAX_BAR_CLIENTS = 100
"""Above this many clients the plot is a heatmap of label shares instead of stacked bars."""


def label_distribution(
    labels: npt.ArrayLike, partitions: Sequence[npt.ArrayLike], num_classes: int
) -> npt.NDArray[np.int64]:
    """A ``(clients, classes)`` matrix of label counts."""
    array = np.asarray(labels, dtype=np.int64).reshape(-1)
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    bad = array[(array < 0) | (array >= num_classes)]
    if len(bad):
        raise ConfigError(f"labels must be in [0, {num_classes}), found {int(bad[0])}")
    counts = np.zeros((len(partitions), num_classes), dtype=np.int64)
    for client, part in enumerate(partitions):
        idx = np.asarray(part, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(array)):
            raise ConfigError(f"client {client}: index out of range for {len(array)} labels")
        counts[client] = np.bincount(array[idx], minlength=num_classes)
    return counts


def write_label_distribution(
    counts: npt.ArrayLike, label_names: Sequence[str], out_dir: str | os.PathLike[str]
) -> tuple[Path, Path]:
    """Write ``label_distribution.csv`` and ``label_distribution.png`` into ``out_dir``.

    Up to :data:`MAX_BAR_CLIENTS` clients are drawn as stacked bars of counts; beyond that, as a
    heatmap of each client's label shares, which stays readable for thousands of clients.
    """
    matrix = np.asarray(counts, dtype=np.int64)
    if matrix.ndim != 2 or matrix.shape[1] != len(label_names) or 0 in matrix.shape:
        raise ConfigError(
            f"counts must be (clients >= 1, {len(label_names)} classes >= 1), got {matrix.shape}"
        )
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    csv_path = folder / "label_distribution.csv"
    with csv_path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["client", *label_names, "total"])
        for client, row in enumerate(matrix.tolist()):
            writer.writerow([client, *row, sum(row)])
    png_path = folder / "label_distribution.png"
    _plot(matrix, [_shown(name) for name in label_names], png_path)
    return csv_path, png_path


def _shown(name: str) -> str:
    """A class name as Matplotlib draws it verbatim: ``$`` is not math, ``_x`` is not hidden."""
    name = name.replace("$", r"\$")
    return f" {name}" if name.startswith("_") else name


def _plot(matrix: npt.NDArray[np.int64], label_names: list[str], path: Path) -> None:
    # Figure + Agg canvas directly: no pyplot, so no global backend or figure state.
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure

    num_clients, num_classes = matrix.shape
    height = min(3.0 + 0.15 * min(num_clients, MAX_BAR_CLIENTS), 18.0)
    fig = Figure(figsize=(9.0, height), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    clients = np.arange(num_clients)
    if num_clients <= MAX_BAR_CLIENTS:
        if num_classes <= 20:  # qualitative maps: integer i is the i-th distinct colour
            cmap = colormaps["tab10" if num_classes <= 10 else "tab20"]
            colours = [cmap(c) for c in range(num_classes)]
        else:
            colours = [colormaps["turbo"](x) for x in np.linspace(0.0, 1.0, num_classes)]
        # One PolyCollection per class instead of one patch per bar: 10x faster for many bars.
        right = np.cumsum(matrix, axis=1)
        left = right - matrix
        for c, name in enumerate(label_names):
            boxes = [
                [(x0, y - 0.4), (x1, y - 0.4), (x1, y + 0.4), (x0, y + 0.4)]
                for y, x0, x1 in zip(clients, left[:, c], right[:, c], strict=True)
                if x1 > x0
            ]
            ax.add_collection(
                PolyCollection(boxes, facecolors=[colours[c]], edgecolors="none", label=name)
            )
        ax.set_xlim(0, max(1, int(right[:, -1].max())) * 1.02)
        ax.set_xlabel("samples")
        ax.set_ylim(num_clients - 0.5, -0.5)
        ax.legend(
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize="small",
            ncols=1 + num_classes // 25,
        )
    else:
        totals = np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        image = ax.imshow(matrix / totals, aspect="auto", interpolation="nearest", cmap="viridis")
        fig.colorbar(image, ax=ax, label="share of client's samples")
        ax.set_xticks(range(num_classes), label_names, rotation=90, fontsize="small")
    step = max(1, num_clients // 40)
    ax.set_yticks(clients[::step])
    ax.set_ylabel("client")
    ax.set_title(f"Label distribution over {num_clients} clients")
    fig.savefig(path, dpi=100)
