"""Store integrity: a deleted chunk is named, never read as zeros; a corrupt chunk is named."""

from __future__ import annotations

import numpy as np
import pytest

from rsdyn.core.store import (
    StoreError,
    check_chunks,
    corrupt_chunks,
    describe_read_failure,
    open_group,
    read_group,
    require_finite,
    write_group,
)


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    return write_group(
        tmp_path / "activations.zarr",
        {
            "original": rng.standard_normal((4, 6, 10)).astype(np.float32),
            "units": np.arange(10),
            "nested": {"zeros": np.zeros((3, 8)), "nan": np.full((3, 8), np.nan)},
        },
        chunks={"original": (4, 6, 4), "zeros": (3, 4), "nan": (3, 4)},
    )


def test_float_arrays_fill_with_nan_and_every_chunk_is_written(store):
    group = open_group(store)
    assert np.isnan(group["original"].metadata.fill_value)
    assert group["units"].metadata.fill_value == 0
    for name in ("original", "nested/zeros", "nested/nan"):  # chunks equal to the fill value too
        assert group[name].nchunks_initialized == group[name].nchunks
    check_chunks(store)


@pytest.mark.parametrize("array,chunk", [("original", "c/0/0/1"), ("nested/zeros", "c/0/1")])
def test_a_deleted_chunk_is_named_when_the_store_is_opened(store, array, chunk):
    (store / array / chunk).unlink()
    with pytest.raises(StoreError) as info:
        read_group(store)
    message = str(info.value)
    assert message == (
        f"{store}: array '{array}' is missing chunk {chunk}; the store was damaged after it was written: "
        f"repair it with `rm -r {store}`, then run snakemake again."
    )


def test_a_deleted_chunk_reads_as_nan_not_zeros(store):
    (store / "original" / "c/0/0/1").unlink()
    group = open_group(store, check=False)
    values = group["original"][...]
    assert np.isnan(values[:, :, 4:8]).all() and np.isfinite(values[:, :, :4]).all()
    with pytest.raises(StoreError, match=r"array 'original' holds 96 NaN or infinite values \(the first at index \(0, 0, 4\), chunk c/0/0/1\)"):
        require_finite(values, store, group["original"], "original")


def test_a_corrupt_chunk_is_named(store):
    chunk = store / "original" / "c/0/0/2"
    chunk.write_bytes(chunk.read_bytes()[:10])
    assert [(name, key) for name, key, _ in corrupt_chunks(store)] == [("original", "c/0/0/2")]
    with pytest.raises(Exception) as info:  # zarr's own error names neither file nor chunk
        read_group(store)
    message = describe_read_failure(info.value, [store])
    assert message.startswith(f"{store}: chunk c/0/0/2 of array 'original' cannot be read (")
    assert message.endswith(f"the file is corrupt: repair it with `rm -r {store}`, then run snakemake again.")


def test_the_advice_names_the_rule_output_that_holds_the_store(tmp_path):
    output = tmp_path / "cae"
    store = write_group(output / "embedding.zarr", {"embedding": np.ones((2, 3))})
    (output / ".snakemake_timestamp").touch()
    (store / "embedding" / "c/0/0").unlink()
    with pytest.raises(StoreError, match=f"repair it with `rm -r {output}`, then run snakemake again"):
        open_group(store)


def test_other_errors_are_not_blamed_on_the_store(store):
    assert describe_read_failure(ValueError("something else"), [store]) is None
