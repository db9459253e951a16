"""Atomic output writing and the zarr (v3) stores of the data contract.

Every output is first written to a hidden temporary sibling and renamed into place
only when complete, so a killed job never leaves a store that looks finished.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _temp_sibling(final: Path) -> Path:
    return final.with_name(f".tmp-{os.getpid()}-{final.name}")


def remove_stale_temporaries(final: Path) -> None:
    """Delete temporaries left next to ``final`` by an earlier, killed job."""
    for stale in final.parent.glob(f".tmp-*-{final.name}"):
        _remove(stale)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write to; rename it to ``final`` only on success.

    On any exception (including SIGTERM, see :func:`raise_on_sigterm`) the temporary
    is deleted and ``final`` is left absent, never half-written.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    temp = _temp_sibling(final)
    try:
        yield temp
    except BaseException:
        _remove(temp)
        raise
    _remove(final)
    os.replace(temp, final)


def raise_on_sigterm() -> None:
    """Turn SIGTERM into ``SystemExit`` so that ``finally``/cleanup blocks run."""

    def _handler(signum, frame):  # noqa: ARG001 - signal handler signature
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _handler)


def _write_node(group: zarr.Group, name: str, value: Any, chunks: Mapping[str, tuple]) -> None:
    if isinstance(value, Mapping):
        sub = group.create_group(name)
        for key, item in value.items():
            _write_node(sub, key, item, chunks)
        return
    array = np.asarray(value)
    chunk_shape = chunks.get(name, "auto")
    group.create_array(name, data=array, chunks=chunk_shape)


def write_group(
    final: str | os.PathLike,
    arrays: Mapping[str, Any],
    attrs: Mapping[str, Any] | None = None,
    chunks: Mapping[str, tuple] | None = None,
) -> Path:
    """Write a zarr v3 group atomically.

    ``arrays`` maps names to arrays, or to nested mappings (sub-groups). ``chunks``
    maps an array name (at any depth) to its chunk shape; others are chunked by zarr.
    """
    final = Path(final)
    with atomic_path(final) as temp:
        root = zarr.open_group(str(temp), mode="w", zarr_format=3)
        if attrs:
            root.attrs.update(dict(attrs))
        for name, value in arrays.items():
            _write_node(root, name, value, chunks or {})
    return final


def open_group(path: str | os.PathLike) -> zarr.Group:
    """Open an existing zarr group read-only; clear error when it is missing."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No zarr store at {path}: run the rule that produces it first.")
    return zarr.open_group(str(path), mode="r")


@contextlib.contextmanager
def ignoring_snakemake_marker() -> Iterator[None]:
    """Silence zarr's warning about the `.snakemake_timestamp` file that Snakemake puts in
    every directory() output while a group is listed; it is not part of the store."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Object at \.snakemake_timestamp is not recognized", category=UserWarning)
        yield


def read_group(path: str | os.PathLike) -> dict[str, Any]:
    """Every array of a group (recursively) as NumPy arrays, sub-groups as dicts."""

    def _read(group: zarr.Group) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, member in group.members():
            out[name] = _read(member) if isinstance(member, zarr.Group) else member[...]
        return out

    with ignoring_snakemake_marker():
        return _read(open_group(path))


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike) -> Iterator[Path]:
    """Alias of :func:`atomic_path` for single files (CSV, JSON, figures)."""
    with atomic_path(final) as temp:
        yield temp


# --------------------------------------------------------------------------- streamed writes

#: fill value of arrays written region by region: a region never written reads as NaN,
#: which every reader's finite check rejects, so a gap can never pass for data
STREAMED_FILL_VALUE = float("nan")


@contextlib.contextmanager
def streamed_group(final: str | os.PathLike, attrs: Mapping[str, Any] | None = None) -> Iterator[zarr.Group]:
    """A new zarr v3 group at a hidden temporary sibling of ``final``, to be filled region by
    region (``create_streamed_array``, then ``array[rows] = block``); renamed to ``final``
    only when the ``with`` block ends without an exception, deleted otherwise."""
    with atomic_path(final) as temp:
        root = zarr.open_group(str(temp), mode="w", zarr_format=3)
        if attrs:
            root.attrs.update(dict(attrs))
        yield root


def create_streamed_array(group: zarr.Group, name: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype=np.float32) -> zarr.Array:
    """An empty array of ``group`` to be written block by block; floats are filled with
    ``STREAMED_FILL_VALUE`` (NaN) until written."""
    dtype = np.dtype(dtype)
    fill = STREAMED_FILL_VALUE if dtype.kind == "f" else 0
    return group.create_array(name, shape=tuple(int(s) for s in shape), chunks=tuple(int(c) for c in chunks), dtype=dtype, fill_value=fill)


def _array_dir(array: zarr.Array) -> Path:
    store = array.store_path.store
    root = getattr(store, "root", None)
    if root is None:
        raise TypeError(f"{array.name} is not in a local directory store; chunk files can only be linked between local stores.")
    return Path(root) / array.store_path.path


def link_chunks(source: zarr.Array, target: zarr.Array, chunk_offset: tuple[int, ...]) -> int:
    """Place every stored chunk of ``source`` into ``target`` at chunk-grid position
    ``chunk_offset + its own``, by hard-linking the chunk file (copying it where the file
    system has no hard links). The encoded bytes move unchanged: nothing is decoded or
    recompressed, so the cost is one link per chunk, whatever the data size, and the
    target holds exactly the bytes the source held. Both arrays must have the same chunk
    shape, data type, fill value and codecs. Returns the number of chunks placed."""
    same = (
        source.chunks == target.chunks
        and source.dtype == target.dtype
        and source.metadata.codecs == target.metadata.codecs
        and np.array_equal(np.asarray(source.fill_value), np.asarray(target.fill_value), equal_nan=True)
    )
    if not same:
        raise ValueError(f"cannot link the chunks of {source.name} into {target.name}: chunk shape, dtype, fill value or codecs differ.")
    grid = source.cdata_shape
    if any(offset + size > total for offset, size, total in zip(chunk_offset, grid, target.cdata_shape)):
        raise ValueError(f"{source.name} (chunk grid {grid}) at offset {chunk_offset} does not fit {target.name} (chunk grid {target.cdata_shape}).")
    source_dir, target_dir = _array_dir(source), _array_dir(target)
    encode_source = source.metadata.chunk_key_encoding.encode_chunk_key
    encode_target = target.metadata.chunk_key_encoding.encode_chunk_key
    placed = 0
    for coords in np.ndindex(*grid):
        chunk_file = source_dir / encode_source(coords)
        if not chunk_file.is_file():  # never written, or equal to the fill value: absent in both
            continue
        destination = target_dir / encode_target(tuple(o + c for o, c in zip(chunk_offset, coords)))
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(chunk_file, destination)
        except OSError:
            shutil.copyfile(chunk_file, destination)
        placed += 1
    return placed
