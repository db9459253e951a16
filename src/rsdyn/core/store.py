"""Atomic output writing and the zarr (v3) stores of the data contract.

Every output is first written to a hidden temporary sibling and renamed into place
only when complete, so a killed job never leaves a store that looks finished.

Every chunk of every array is written (also one that equals the fill value), and float
arrays have a NaN fill value: a chunk deleted later is reported by :func:`open_group`
(naming the array and chunk), and reads as NaN, never as plausible zeros, anywhere else.
Every chunk carries a CRC-32C (zarr v3's ``crc32c`` codec): a chunk changed after it was
written fails to decode, and :func:`corrupt_chunks` names it. Every output also gets a
manifest (:mod:`rsdyn.core.manifest`) with the checksums of its other files (metadata,
tables, weights), checked by :func:`open_group` and by every job for its inputs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from rsdyn.core.manifest import (
    check_output,
    needs_manifest,
    repair_advice,
    write_manifest,
)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _temp_sibling(final: Path) -> Path:
    return final.with_name(f".tmp-{os.getpid()}-{final.name}")


def _inside_temporary(final: Path) -> bool:
    """Whether ``final`` lies inside the temporary of an enclosing atomic write (whose
    manifest covers it)."""
    return any(part.startswith(".tmp-") for part in final.parent.parts)


def remove_stale_temporaries(final: Path) -> None:
    """Delete temporaries left next to ``final`` by an earlier, killed job."""
    for stale in final.parent.glob(f".tmp-*-{final.name}"):
        _remove(stale)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write to; rename it to ``final`` only on success.

    On any exception (including SIGTERM, see :func:`raise_on_sigterm`) the temporary
    is deleted and ``final`` is left absent, never half-written. On success, an output
    that :func:`rsdyn.core.manifest.needs_manifest` gets its manifest (checksums) beside
    it, unless it lies inside an enclosing atomic write, whose manifest covers it.
    """
    final = Path(final)
    if final.name in ("", ".", ".."):  # the config refuses such names; never replace a parent folder
        raise ValueError(f"refusing to write {final}: it names a folder above the output, not an output.")
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    temp = _temp_sibling(final)
    try:
        yield temp
        if needs_manifest(temp) and not _inside_temporary(final):
            write_manifest(temp, final)
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

#: the bytes-to-bytes codecs of every array rsdyn writes: zarr's default compressor, then a
#: CRC-32C of the compressed chunk, checked whenever the chunk is decoded or linked
CHUNK_CODECS = (ZstdCodec(level=0, checksum=False), Crc32cCodec())


def create_array(group: zarr.Group, name: str, *, data: Any = None, shape=None, dtype=None, chunks="auto") -> zarr.Array:
    """``group.create_array`` with rsdyn's fill value and chunk options (see the module
    docstring); give ``data``, or ``shape`` and ``dtype`` for an array filled later."""
    dtype = np.asarray(data).dtype if data is not None else np.dtype(dtype)
    options = {"chunks": chunks, "fill_value": fill_value(dtype), "config": ARRAY_CONFIG, "compressors": CHUNK_CODECS}
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
    """Open an existing zarr group read-only; clear error when it is missing, when a file
    differs from its manifest (:func:`rsdyn.core.manifest.check_output`), when a metadata
    file cannot be read and, with ``check``, when a chunk of any of its arrays is missing
    (:func:`check_chunks`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No zarr store at {path}: run the rule that produces it first.")
    check_output(path)
    if path not in OPENED:
        OPENED.append(path)
    try:
        group = zarr.open_group(str(path), mode="r")
        if check:
            check_chunks(path, group)
    except (ValueError, KeyError, FileNotFoundError) as err:
        described = describe_metadata_failure([path])
        if described:
            raise StoreError(described) from err
        raise
    return group


def arrays_of(group: zarr.Group, prefix: str = "") -> Iterator[tuple[str, zarr.Array]]:
    """``(name, array)`` of every array of ``group``, recursively (names joined with /)."""
    with ignoring_snakemake_marker():
        members = list(group.members())
    for name, member in members:
        if isinstance(member, zarr.Group):
            yield from arrays_of(member, f"{prefix}{name}/")
        else:
            yield f"{prefix}{name}", member


def chunk_keys(array: zarr.Array) -> Iterator[tuple[tuple[int, ...], str]]:
    """``(chunk coordinates, chunk key)`` of every chunk of ``array``."""
    encode = array.metadata.chunk_key_encoding.encode_chunk_key
    for coords in np.ndindex(*array.cdata_shape):
        yield coords, encode(coords)


def missing_chunks(path: str | os.PathLike, array: zarr.Array) -> list[str]:
    """Keys of the chunks of ``array`` (in the local store at ``path``) absent on disk."""
    root = Path(path) / array.path if array.path else Path(path)
    if array.nchunks_initialized == array.nchunks:
        return []
    return [key for _, key in chunk_keys(array) if not (root / key).is_file()]


def _rebuild_advice(path: str | os.PathLike) -> str:
    return repair_advice([path])


def check_chunks(path: str | os.PathLike, group: zarr.Group | None = None) -> None:
    """Raise StoreError naming the array and chunk when any chunk of the store is missing."""
    group = group if group is not None else zarr.open_group(str(path), mode="r")
    for name, array in arrays_of(group):
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


def has_checksums(array: zarr.Array) -> bool:
    """Whether the chunks of ``array`` end with a CRC-32C (the ``crc32c`` codec last)."""
    codecs = array.metadata.codecs
    return bool(codecs) and isinstance(codecs[-1], Crc32cCodec)


def chunk_checksum_ok(chunk_file: str | os.PathLike) -> bool:
    """Whether a chunk file written with the ``crc32c`` codec last still holds the bytes it
    was written with (its last 4 bytes are the CRC-32C of the others), without decoding."""
    data = Path(chunk_file).read_bytes()
    return len(data) >= 4 and int.from_bytes(data[-4:], "little") == google_crc32c.value(data[:-4])


def corrupt_chunks(path: str | os.PathLike, limit: int | None = 1) -> list[tuple[str, str, str]]:
    """``(array, chunk key, error)`` of up to ``limit`` chunks of the store that cannot be
    read back (truncated or overwritten files): a chunk with a CRC-32C is checked against
    it without decoding, any other is decoded; one chunk at a time."""
    found = []
    for name, array in arrays_of(zarr.open_group(str(path), mode="r")):
        folder = Path(path) / array.path
        for coords, key in chunk_keys(array):
            if has_checksums(array):
                chunk_file = folder / key
                if not chunk_file.is_file() or chunk_checksum_ok(chunk_file):
                    continue  # a missing chunk is check_chunks' to name
                cause = "its CRC-32C checksum does not match its bytes"
            else:
                try:
                    array.get_block_selection(coords)
                    continue
                except Exception as err:  # noqa: BLE001 - any codec error means the chunk is damaged
                    cause = f"{type(err).__name__}: {err}"
            found.append((name, key, cause))
            if limit is not None and len(found) >= limit:
                return found
    return found


def is_read_failure(error: BaseException) -> bool:
    """Whether ``error`` was raised while zarr decoded a chunk."""
    import traceback

    frames = traceback.extract_tb(error.__traceback__)
    return any(part in frame.filename for frame in frames for part in ("zarr/codecs", "codec_pipeline", "numcodecs"))


def chunk_damage_message(path: str | os.PathLike, name: str, key: str, cause: str) -> str:
    """The sentence for a chunk of array ``name`` of the store at ``path`` that cannot be read."""
    chunk_file = Path(path) / name / key
    return f"{path}: chunk {key} of array '{name}' cannot be read ({cause}); the file is corrupt: {_rebuild_advice(chunk_file)}."


def unreadable_metadata(path: str | os.PathLike) -> list[tuple[Path, str]]:
    """``(zarr.json file, cause)`` of every metadata file of the store that is not valid JSON."""
    found = []
    for meta in sorted(Path(path).rglob("zarr.json")):
        try:
            json.loads(meta.read_text())
        except (OSError, ValueError) as err:
            found.append((meta, f"{type(err).__name__}: {err}"))
    return found


def describe_metadata_failure(paths: list[Path] | None = None) -> str | None:
    """One sentence naming the first metadata file (``zarr.json``) of the stores ``paths``
    (default: every store opened by this process) that cannot be read, or None."""
    for path in paths if paths is not None else OPENED:
        for meta, cause in unreadable_metadata(path):
            return f"{meta} is damaged ({cause}): the store's metadata cannot be read; {_rebuild_advice(path)}."
    return None


def describe_read_failure(error: BaseException, paths: list[Path] | None = None) -> str | None:
    """One sentence naming the store, array and chunk behind a chunk that failed to decode,
    or the metadata file that cannot be parsed (among ``paths``, default every store
    opened by this process), or None when ``error`` is not such a failure or no damaged
    file is found."""
    if isinstance(error, json.JSONDecodeError):
        return describe_metadata_failure(paths)
    if not is_read_failure(error):
        return None
    for path in paths if paths is not None else OPENED:
        for name, key, cause in corrupt_chunks(path):
            return chunk_damage_message(path, name, key, cause)
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
    recompressed, so the cost is one link (and one checksum of a chunk that has one: a
    damaged file is never linked) per chunk, and the target holds exactly the bytes the
    source held. Both arrays must have the same chunk
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
    checked = has_checksums(source)
    encode_source = source.metadata.chunk_key_encoding.encode_chunk_key
    encode_target = target.metadata.chunk_key_encoding.encode_chunk_key
    placed = 0
    for coords in np.ndindex(*grid):
        chunk_file = source_dir / encode_source(coords)
        if not chunk_file.is_file():  # never written, or equal to the fill value: absent in both
            continue
        if checked and not chunk_checksum_ok(chunk_file):  # never link a damaged file into another store
            raise StoreError(
                f"{chunk_file} is damaged (its CRC-32C checksum does not match its bytes), so it cannot be linked "
                f"into {target_dir}; {_rebuild_advice(chunk_file)}."
            )
        destination = target_dir / encode_target(tuple(o + c for o, c in zip(chunk_offset, coords)))
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(chunk_file, destination)
        except OSError:
            shutil.copyfile(chunk_file, destination)
        placed += 1
    return placed
