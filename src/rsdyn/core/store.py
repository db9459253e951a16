"""Atomic output writing and the zarr (v3) stores of the data contract.

Every output is first written to a hidden temporary sibling and renamed into place
only when complete, so a killed job never leaves a store that looks finished.

Every chunk of every array is written (also one that equals the fill value), and float
arrays have a NaN fill value: a chunk deleted later is reported by :func:`open_group`
(naming the array and chunk), and reads as NaN, never as plausible zeros, anywhere else.
A chunk that cannot be decoded is named by :func:`corrupt_chunks`.
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
    if final.name in ("", ".", ".."):  # the config refuses such names; never replace a parent folder
        raise ValueError(f"refusing to write {final}: it names a folder above the output, not an output.")
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


class StoreError(ValueError):
    """A store on disk is incomplete or damaged; the message names the store, array and chunk."""


def fill_value(dtype: np.dtype) -> Any:
    """The fill value of a new array: NaN for floats (a missing chunk reads as NaN, which
    every stage rejects), the zarr default (0, False, "") otherwise."""
    return np.nan if np.issubdtype(np.dtype(dtype), np.floating) else None


#: array options of every array rsdyn writes: every chunk is stored, even one equal to the
#: fill value, so that a missing chunk always means a deleted one
ARRAY_CONFIG = {"write_empty_chunks": True}


def create_array(group: zarr.Group, name: str, *, data: Any = None, shape=None, dtype=None, chunks="auto") -> zarr.Array:
    """``group.create_array`` with rsdyn's fill value and chunk options (see the module
    docstring); give ``data``, or ``shape`` and ``dtype`` for an array filled later."""
    dtype = np.asarray(data).dtype if data is not None else np.dtype(dtype)
    options = {"chunks": chunks, "fill_value": fill_value(dtype), "config": ARRAY_CONFIG}
    if data is not None:
        return group.create_array(name, data=np.asarray(data), **options)
    return group.create_array(name, shape=shape, dtype=dtype, **options)


def _write_node(group: zarr.Group, name: str, value: Any, chunks: Mapping[str, tuple]) -> None:
    if isinstance(value, Mapping):
        sub = group.create_group(name)
        for key, item in value.items():
            _write_node(sub, key, item, chunks)
        return
    create_array(group, name, data=np.asarray(value), chunks=chunks.get(name, "auto"))


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


#: stores opened by this process (for :func:`describe_read_failure`)
OPENED: list[Path] = []


def open_group(path: str | os.PathLike, check: bool = True) -> zarr.Group:
    """Open an existing zarr group read-only; clear error when it is missing and, with
    ``check``, when a chunk of any of its arrays is missing (:func:`check_chunks`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No zarr store at {path}: run the rule that produces it first.")
    group = zarr.open_group(str(path), mode="r")
    if path not in OPENED:
        OPENED.append(path)
    if check:
        check_chunks(path, group)
    return group


def _arrays(group: zarr.Group, prefix: str = "") -> Iterator[tuple[str, zarr.Array]]:
    """``(name, array)`` of every array of ``group``, recursively (names joined with /)."""
    with ignoring_snakemake_marker():
        members = list(group.members())
    for name, member in members:
        if isinstance(member, zarr.Group):
            yield from _arrays(member, f"{prefix}{name}/")
        else:
            yield f"{prefix}{name}", member


def _chunk_keys(array: zarr.Array) -> Iterator[tuple[tuple[int, ...], str]]:
    encode = array.metadata.chunk_key_encoding.encode_chunk_key
    for coords in np.ndindex(*array.cdata_shape):
        yield coords, encode(coords)


def missing_chunks(path: str | os.PathLike, array: zarr.Array) -> list[str]:
    """Keys of the chunks of ``array`` (in the local store at ``path``) absent on disk."""
    root = Path(path) / array.path if array.path else Path(path)
    if array.nchunks_initialized == array.nchunks:
        return []
    return [key for _, key in _chunk_keys(array) if not (root / key).is_file()]


def rule_output(path: str | os.PathLike) -> Path:
    """The workflow output that holds ``path``: its nearest folder (itself included) that
    Snakemake marked as a directory() output, else ``path`` itself."""
    path = Path(path)
    for folder in (path, *path.parents):
        if (folder / ".snakemake_timestamp").exists():
            return folder
    return path


def _rebuild_advice(path: str | os.PathLike) -> str:
    return f"delete {rule_output(path)} and run snakemake again to rebuild it"


def check_chunks(path: str | os.PathLike, group: zarr.Group | None = None) -> None:
    """Raise StoreError naming the array and chunk when any chunk of the store is missing."""
    group = group if group is not None else zarr.open_group(str(path), mode="r")
    for name, array in _arrays(group):
        missing = missing_chunks(path, array)
        if missing:
            raise StoreError(
                f"{path}: array '{name}' is missing chunk {missing[0]}"
                + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
                + f"; the store was damaged after it was written: {_rebuild_advice(path)}."
            )


def require_finite(values: np.ndarray, path: str | os.PathLike, array: zarr.Array, name: str, rows: np.ndarray | None = None) -> None:
    """Raise StoreError naming the store, array and chunk of the first NaN or infinite value
    of ``values``: all of ``array`` (read from the store at ``path``), or its rows ``rows``
    along the first axis."""
    finite = np.isfinite(values)
    if finite.all():
        return
    index = tuple(int(i) for i in np.argwhere(~finite)[0])
    if rows is not None:
        index = (int(np.asarray(rows)[index[0]]), *index[1:])
    coords = tuple(i // c for i, c in zip(index, array.chunks))
    key = array.metadata.chunk_key_encoding.encode_chunk_key(coords)
    raise StoreError(
        f"{path}: array '{name}' holds {int((~finite).sum())} NaN or infinite values (the first at index {index}, "
        f"chunk {key}); only finite states can be analysed: {_rebuild_advice(path)}."
    )


def corrupt_chunks(path: str | os.PathLike, limit: int = 1) -> list[tuple[str, str, str]]:
    """``(array, chunk key, error)`` of up to ``limit`` chunks of the store that cannot be
    read back (truncated or overwritten files); reads every chunk, one at a time."""
    found = []
    for name, array in _arrays(zarr.open_group(str(path), mode="r")):
        for coords, key in _chunk_keys(array):
            try:
                array.get_block_selection(coords)
            except Exception as err:  # noqa: BLE001 - any codec error means the chunk is damaged
                found.append((name, key, f"{type(err).__name__}: {err}"))
                if len(found) >= limit:
                    return found
    return found


def is_read_failure(error: BaseException) -> bool:
    """Whether ``error`` was raised while zarr decoded a chunk."""
    import traceback

    frames = traceback.extract_tb(error.__traceback__)
    return any(part in frame.filename for frame in frames for part in ("zarr/codecs", "codec_pipeline", "numcodecs"))


def describe_read_failure(error: BaseException, paths: list[Path] | None = None) -> str | None:
    """One sentence naming the store, array and chunk behind a chunk that failed to decode
    (among ``paths``, default every store opened by this process), or None when
    ``error`` is not such a failure or no damaged chunk is found."""
    if not is_read_failure(error):
        return None
    for path in paths if paths is not None else OPENED:
        for name, key, cause in corrupt_chunks(path):
            return (
                f"{path}: chunk {key} of array '{name}' cannot be read ({cause}); the file is corrupt: "
                f"{_rebuild_advice(path)}."
            )
    return None


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
    """An empty array of ``group`` to be written block by block (``create_array``'s fill
    value and chunk options: floats read as NaN until written)."""
    return create_array(group, name, shape=tuple(int(s) for s in shape), dtype=np.dtype(dtype), chunks=tuple(int(c) for c in chunks))


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
