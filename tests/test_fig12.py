"""Figures 1 and 2 render from a synthetic store."""

from __future__ import annotations

import numpy as np
import pytest

from rsdyn.core.figures import save_figure
from rsdyn.core.store import read_group, write_group
from rsdyn.population.figure import example_units, make_fig2
from rsdyn.units import layer_stats as ls
from rsdyn.units import unit_stats as us
from rsdyn.units.figure import make_fig1


@pytest.fixture(scope="module")
def synthetic_results(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("fig12")
    store = us.write_synthetic_store(tmp_path / "activations.zarr", 30, 4, 10, unit_chunk=5)
    arrays, attrs = us.gather([
        write_group(tmp_path / "shard_0.zarr", us.compute_shard(store, 0, 10, {"n_shuffles": 20}),
                    attrs=us.shard_attrs(store, 0, 10, {"n_shuffles": 20}))
    ])
    unit_stats = read_group(write_group(tmp_path / "unit_stats.zarr", arrays, attrs=attrs))
    return tmp_path, unit_stats, ls.layer_stats(store, 0.1)


def test_fig1_renders(synthetic_results):
    tmp_path, unit_stats, table = synthetic_results
    paths = [tmp_path / "figures" / "fig1.pdf", tmp_path / "figures" / "fig1.png"]
    save_figure(make_fig1(unit_stats, table, title="synthetic"), paths, dpi=60)
    assert all(path.stat().st_size > 1000 for path in paths)
    assert not list((tmp_path / "figures").glob(".tmp-*"))


def test_fig2_renders(synthetic_results):
    tmp_path, unit_stats, _ = synthetic_results
    paths = [tmp_path / "figures" / "fig2.pdf", tmp_path / "figures" / "fig2.png"]
    save_figure(make_fig2(unit_stats, n_example_units=4, title="synthetic"), paths, dpi=60)
    assert all(path.stat().st_size > 1000 for path in paths)


def test_example_units_are_evenly_spaced_ranks():
    rotations = np.array([5.0, -3.0, 0.0, 9.0, 1.0])
    assert list(example_units(rotations, 3)) == [1, 4, 3]  # lowest, median, highest R
    assert len(example_units(rotations, 10)) == 5
