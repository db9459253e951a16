"""Each figure drawn from the smoke run's stores: its panel letters are unique and lie on
no data or legend, and no legend box covers plotted data (matplotlib window extents
against the display coordinates of line vertices, scatter and quiver positions and bars
of the same axes: tests/figure_layout.py). Also the defects issue 20 listed, one by one."""

from __future__ import annotations

import numpy as np
import pytest
from figure_layout import drawn, legend_overlaps, letter_overlaps, panel_letters

pytestmark = pytest.mark.workflow


def build(name: str, run):
    from rsdyn.core.store import open_group, read_group
    from rsdyn.units.layer_stats import read_layer_stats

    if name == "fig1":
        from rsdyn.units.figure import make_fig1

        return make_fig1(read_group(run / "unit_stats.zarr"), read_layer_stats(run / "layer_stats.csv"), title="Fig. 1 - smoke")
    if name == "fig2":
        from rsdyn.population.figure import make_fig2

        return make_fig2(read_group(run / "unit_stats.zarr"), read_group(run / "population.zarr"), title="Fig. 2 - smoke")
    if name == "fig3":
        from rsdyn.cae.figure import fig3

        return fig3(run / "cae")
    if name == "fig4":
        from rsdyn.geometry.figure import fig4
        from rsdyn.geometry.run import read_teleport

        attrs = dict(open_group(run / "teleport.zarr").attrs)
        return fig4(read_group(run / "pca.zarr"), read_teleport(run / "teleport.zarr"), 4, None, 0.9,
                    attrs.get("range_sd") if attrs.get("range") == "per_layer" else None)
    from rsdyn.jacobian.figure import fig5
    from rsdyn.jacobian.run import read_jacobian

    return fig5(*read_jacobian(run / "jacobian.zarr"))


@pytest.fixture(scope="module")
def figures(smoke_run):
    import matplotlib.pyplot as plt

    run = smoke_run / "results" / "smoke"
    drawn_figures = {name: build(name, run) for name in ("fig1", "fig2", "fig3", "fig4", "fig5")}
    yield drawn_figures
    for figure in drawn_figures.values():
        plt.close(figure)


EXPECTED_LETTERS = {
    "fig1": {"A'", "B", "C", "C'", "D", "E", "F", "G", "H", "H'", "H''"},
    "fig2": {"A", "B", "C", "C′", "D"},
    "fig3": {"A", "B", "C", "D", "E"},
    "fig4": {"A", "B", "C", "C′", "D", "E"},
    "fig5": set("ABCDEFGHIJKLMNOP"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_LETTERS))
def test_panel_letters_are_unique_and_clear_of_data_and_legends(figures, name):
    letters = panel_letters(figures[name])
    assert sorted(letters) == sorted(set(letters)), f"{name}: a letter appears twice: {letters}"
    assert set(letters) == EXPECTED_LETTERS[name]
    assert letter_overlaps(figures[name]) == []


@pytest.mark.parametrize("name", sorted(EXPECTED_LETTERS))
def test_no_legend_covers_plotted_data(figures, name):
    assert legend_overlaps(figures[name]) == []


def test_fig1_has_one_y_label_beside_c_prime_and_a_readable_d(figures):
    figure = figures["fig1"]
    drawn(figure)
    by_title = {ax.get_title(): ax for ax in figure.get_axes()}
    c_prime, d = by_title["Median r over units"], by_title["r over all pairs l < m"]
    colourbar_labels = [ax.get_ylabel() for ax in figure.get_axes() if not ax.get_title() and ax.get_ylabel()]
    assert "Pearson r" not in colourbar_labels  # C's bar is titled above it, not labelled beside C'
    assert c_prime.get_ylabel() == "median Pearson r (band: IQR)"
    assert "r < 0 or undefined:" in d.get_xlabel() and d.get_images()[0].norm.__class__.__name__ == "PowerNorm"


def test_fig2_every_null_panel_has_its_legend_and_the_whole_symmetric_null(figures, smoke_run):
    from rsdyn.core.store import read_group

    samples = np.asarray(read_group(smoke_run / "results/smoke/unit_stats.zarr")["original"]["rotations_point_shuffle_samples"])
    panels = [ax for ax in figures["fig2"].get_axes() if "null mean" in ax.get_title()]
    row = panels[0].get_figure()  # the subfigure of panel B, whose legend names every null
    legend_texts = {text.get_text() for legend in row.legends for text in legend.get_texts()}
    names = {ax.get_title().split(":")[0] for ax in panels}
    assert len(panels) == 5 and {f"{name} null" for name in names} | {"units, original", "units, token-shuffled"} <= legend_texts
    low, high = panels[0].get_xlim()
    assert low <= samples.min() and high >= samples.max()


def test_fig3_marks_clipped_references_and_puts_no_r2_crosses_on_the_axis(figures):
    ax = next(ax for ax in figures["fig3"].get_axes() if ax.get_title().startswith("D  "))
    labels = [collection.get_label() for collection in ax.collections]
    assert "reference < -1" in labels
    for collection in ax.collections:
        if "no R^2" in collection.get_label():
            assert collection.get_offset_transform() == ax.get_xaxis_transform()  # at the axis, not at R^2 = 0
            assert np.allclose(np.asarray(collection.get_offsets())[:, 1], 0.0)


def test_fig5_puts_the_outlier_quantities_on_log_axes_and_shows_the_initial_eigenvalues(figures):
    axes = figures["fig5"].get_axes()
    for key in ("spectral radius", "update size"):
        assert next(ax for ax in axes if key in ax.get_title()).get_yscale() == "log"
    cloud = next(ax for ax in axes if "eigenvalues of J" in ax.get_title())
    initial = next(collection for collection in cloud.collections if collection.get_label() == "initial")
    trained = next(collection for collection in cloud.collections if collection.get_label() == "trained")
    assert initial.get_zorder() > trained.get_zorder()


def test_the_claims_footer_reads_missing_numbers_as_na():
    """A claim whose value, interval end or adjusted p summary.json holds as null (not
    finite, as on a tiny model) is still marked, with "n/a" in place of the number."""
    import matplotlib.pyplot as plt

    from rsdyn.core.figures import mark_claims

    figure = plt.figure()
    mark_claims(figure, [
        {"id": "a", "figure": "1C", "value": None, "interval": [None, 0.5], "p_holm": None, "verdict": "inconclusive"},
        {"id": "b", "figure": "1D", "value": 0.25, "interval": [0.125, 0.375], "p_holm": 0.001, "verdict": "reproduced"},
    ])
    texts = [text.get_text() for text in figure.texts]
    plt.close(figure)
    assert any("a: n/a [n/a, 0.5], Holm p n/a" in text for text in texts)
    assert any("b: 0.25 [0.125, 0.375], Holm p 0.001" in text for text in texts)
