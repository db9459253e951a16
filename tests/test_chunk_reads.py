"""Readers of activations.zarr touch only the chunks they need: a unit shard its column of
chunks (every sample chunk, its unit chunks only), layer statistics one unit column at a
time, whatever the sample chunking."""

from __future__ import annotations

import numpy as np
import zarr
from test_cae_data import CountingStore
from zarr.storage import LocalStore

from rsdyn.units import layer_stats, unit_stats

N, N_LAYERS, D = 10, 2, 24
SAMPLE_CHUNK, UNIT_CHUNK = 4, 8


def tiled_store(path):
    """A data-contract store of synthetic activations in (4, 2L, 8) tiles: 3 x 1 x 3 chunks."""
    path = unit_stats.write_synthetic_store(path, N, N_LAYERS, D, unit_chunk=UNIT_CHUNK)
    group = zarr.open_group(str(path), mode="r+")
    for condition in ("original", "shuffled"):
        data = group[condition][...]
        del group[condition]
        group.create_array(condition, data=data, chunks=(SAMPLE_CHUNK, 2 * N_LAYERS, UNIT_CHUNK))
    return path


def counting_open(store_path, counter):
    def open_group(path):
        assert str(path) == str(store_path)
        return zarr.open_group(store=counter, mode="r")

    return open_group


def chunk_coords(keys, condition):
    """(sample chunk, unit chunk) of every chunk key of ``condition`` that was read."""
    prefix = f"{condition}/c/"
    return sorted({(int(k.split("/")[2]), int(k.split("/")[4])) for k in keys if k.startswith(prefix)})


def test_a_unit_shard_reads_only_its_unit_columns(tmp_path, monkeypatch):
    path = tiled_store(tmp_path / "activations.zarr")
    counter = CountingStore(LocalStore(str(path), read_only=True))
    monkeypatch.setattr(unit_stats, "open_group", counting_open(path, counter))
    acts = unit_stats.read_units(path, "original", 8, 16)  # exactly unit chunk 1
    np.testing.assert_array_equal(acts, zarr.open_group(str(path), mode="r")["original"][:, :, 8:16].astype(np.float64))
    assert chunk_coords(counter.keys, "original") == [(0, 1), (1, 1), (2, 1)]
    assert chunk_coords(counter.keys, "shuffled") == []
    counter.keys.clear()
    unit_stats.read_units(path, "shuffled", 6, 9)  # straddles unit chunks 0 and 1
    assert chunk_coords(counter.keys, "shuffled") == [(s, u) for s in range(3) for u in (0, 1)]


def test_layer_stats_reads_one_unit_column_of_chunks_at_a_time(tmp_path):
    path = tiled_store(tmp_path / "activations.zarr")
    array = zarr.open_group(str(path), mode="r")["original"]
    blocks = list(layer_stats._unit_blocks(array, "original"))
    assert [start for start, _ in blocks] == [0, 8, 16]
    assert all(block.shape == (N, 2 * N_LAYERS, UNIT_CHUNK) for _, block in blocks)
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks], axis=2), array[...].astype(np.float64))
