"""Label-distribution summaries: counts against a direct count, CSV round trip, valid PNGs."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedlora.data import IidPartitioner, label_distribution, write_label_distribution
from fedlora.errors import ConfigError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@given(seed=st.integers(0, 2**31), num_classes=st.integers(1, 6), num_clients=st.integers(1, 9))
def test_counts_match_a_direct_count(seed: int, num_classes: int, num_clients: int) -> None:
    labels = np.random.default_rng(seed).integers(0, num_classes, 50)
    parts = IidPartitioner(seed=seed).partition(labels, num_clients)
    counts = label_distribution(labels, parts, num_classes)
    assert counts.shape == (num_clients, num_classes)
    for client, part in enumerate(parts):
        direct = Counter(labels[part].tolist())
        assert counts[client].tolist() == [direct.get(c, 0) for c in range(num_classes)]


def test_label_distribution_rejects_bad_labels_and_indices() -> None:
    with pytest.raises(ConfigError, match=r"labels must be in \[0, 2\), found 2"):
        label_distribution(np.array([0, 2]), [np.array([0])], 2)
    with pytest.raises(ConfigError, match="client 1: index out of range"):
        label_distribution(np.array([0, 1]), [np.array([0]), np.array([2])], 2)


def test_csv_and_png_are_written(tmp_path: Path) -> None:
    counts = np.array([[3, 0, 1], [0, 5, 2]])
    csv_path, png_path = write_label_distribution(counts, ["x", "y", "z"], tmp_path / "run")
    with csv_path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["client", "x", "y", "z", "total"]
    assert [[int(v) for v in row] for row in rows[1:]] == [[0, 3, 0, 1, 4], [1, 0, 5, 2, 7]]
    assert png_path.read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize(("num_clients", "num_classes"), [(100, 25), (250, 14)])
def test_many_clients_and_classes_still_plot(
    tmp_path: Path, num_clients: int, num_classes: int
) -> None:
    import matplotlib.image

    counts = np.random.default_rng(0).integers(0, 30, (num_clients, num_classes))
    _, png_path = write_label_distribution(counts, [f"c{i}" for i in range(num_classes)], tmp_path)
    image = matplotlib.image.imread(png_path)
    assert image.shape[0] > 200
    assert image.shape[1] > 200


def test_shape_mismatch_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"counts must be \(clients >= 1, 2 classes >= 1\)"):
        write_label_distribution(np.zeros((3, 3)), ["a", "b"], tmp_path)
    with pytest.raises(ConfigError, match=r"got \(0, 2\)"):
        write_label_distribution(np.zeros((0, 2)), ["a", "b"], tmp_path)


def test_class_names_are_drawn_verbatim(tmp_path: Path) -> None:
    """A name with '$' is no TeX and one starting with '_' is not dropped from the legend."""
    from fedlora.data.summary import _shown

    assert _shown("_other") == " _other"
    assert _shown(r"$\nope$ 5") == r"\$\nope\$ 5"
    names = ["_other", r"$\nope$", "Sci/Tech"]
    csv_path, png_path = write_label_distribution(np.array([[1, 2, 3]]), names, tmp_path)
    assert png_path.read_bytes().startswith(PNG_MAGIC)
    assert csv_path.read_text().splitlines()[0] == "client,_other,$\\nope$,Sci/Tech,total"
