"""The run's figures: the confusion matrix's counts, drawn as one collection of outlines,
against matplotlib's own text outlines."""

from __future__ import annotations

import io

import numpy as np
import pytest
from matplotlib.collections import PathCollection
from matplotlib.textpath import TextPath
from PIL import Image

from experiments import plots


@pytest.mark.parametrize("seed", range(5))
def test_a_count_is_matplotlibs_outline_of_its_text_moved_as_one(seed):
    rng = np.random.default_rng(seed)
    for number in rng.integers(0, 10 ** rng.integers(1, 7), 20):
        text = str(number)
        ours, reference = plots._number_outline(text), TextPath((0, 0), text, size=plots.COUNT_SIZE)
        np.testing.assert_array_equal(ours.codes, reference.codes)
        shift = ours.vertices - reference.vertices
        np.testing.assert_allclose(shift, np.broadcast_to(shift[0], shift.shape), atol=1e-9)  # one translation


@pytest.mark.parametrize("text", ["0", "00", "000000", "8", "88888"])
def test_a_count_of_one_repeated_figure_is_centred_on_its_cell(text):
    vertices = plots._number_outline(text).vertices
    assert abs(vertices[:, 0].min() + vertices[:, 0].max()) < 0.05  # points
    assert abs(vertices[:, 1].min() + vertices[:, 1].max()) < 0.05


def test_the_confusion_matrix_writes_every_count_dark_on_light_cells_and_light_on_dark():
    counts = np.array([[90, 10, 0], [5, 5, 90], [0, 0, 7]])
    fig = plots.confusion_matrix(counts.astype(float), ["a", "b", "c"])  # floats are counts too
    (cells,) = [c for c in fig.axes[0].collections if isinstance(c, PathCollection)]
    assert len(cells.get_paths()) == 9
    for path, number in zip(cells.get_paths(), counts.ravel()):
        reference = TextPath((0, 0), str(number), size=plots.COUNT_SIZE)
        np.testing.assert_allclose(np.ptp(path.vertices, axis=0), np.ptp(reference.vertices, axis=0))
    white = [tuple(c) == (1.0, 1.0, 1.0, 1.0) for c in cells.get_facecolors()]
    assert white == [True, False, False, False, False, True, False, False, True]  # rate > 0.5
    np.testing.assert_allclose(cells.get_offsets(), [(j, i) for i in range(3) for j in range(3)])
    png = io.BytesIO()
    fig.savefig(png, format="png")
    assert Image.open(png).size == (400, 400)


def test_a_matrix_of_many_classes_has_no_counts():
    k = plots.MAX_ANNOTATED_CLASSES + 1
    fig = plots.confusion_matrix(np.eye(k, dtype=int), [str(i) for i in range(k)])
    assert not [c for c in fig.axes[0].collections if isinstance(c, PathCollection)]
