"""Checksums of every output, written when the output is created and checked when it is read.

Every output written through :func:`rsdyn.core.store.atomic_path` (a zarr store, the
converted model folder, the CAE folder, a CSV, TSV, NPZ, JSON or YAML file) gets a
*manifest*: a hidden JSON file beside it (``.{name}.rsdyn-manifest.json``) with the size
and CRC-32C of each of its files and, for a table, its row count. The chunk files of a
zarr array are not listed: each chunk carries its own CRC-32C (zarr v3's ``crc32c``
codec, :data:`rsdyn.core.store.CHUNK_CODECS`), checked whenever it is decoded or linked.

:func:`check_output` compares an output with its manifest and raises
:class:`DamagedOutputError` naming the damaged file and the exact command that repairs
it: the output to delete (the whole Snakemake output that holds the file) and every
output that shares the file through a hard link (the capture shards whose chunk files
the assembled ``activations.zarr`` links), so that the rebuild cannot link the damaged
file again. An output written before rsdyn kept manifests has none and is not checked.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Iterable, Iterator
from pathlib import Path

import google_crc32c

#: the end of a manifest's file name: ``.{output name}{MANIFEST_SUFFIX}`` beside the output
MANIFEST_SUFFIX = ".rsdyn-manifest.json"

#: single files that get a manifest (every directory gets one)
CHECKED_SUFFIXES = (".csv", ".tsv", ".npz", ".json", ".yaml")

#: tables whose data rows the manifest counts
TABLE_SUFFIXES = (".csv", ".tsv")

#: files inside outputs that are not part of them (Snakemake's marker of a directory output)
IGNORED = (".snakemake_timestamp",)

FORMAT = 1


class DamagedOutputError(ValueError):
    """An output differs from what was written; the message names the file and the repair."""


def manifest_path(output: str | os.PathLike) -> Path:
    """Where the manifest of ``output`` lies (beside it, hidden)."""
    output = Path(output)
    return output.with_name(f".{output.name}{MANIFEST_SUFFIX}")


def is_manifest(path: str | os.PathLike) -> bool:
    return Path(path).name.endswith(MANIFEST_SUFFIX)


def needs_manifest(path: str | os.PathLike) -> bool:
    """Whether an output at ``path`` gets a manifest: every directory, and files of the
    kinds :data:`CHECKED_SUFFIXES` (not figures, not the README)."""
    path = Path(path)
    if is_manifest(path):
        return False
    return path.is_dir() or path.suffix in CHECKED_SUFFIXES


def crc32c_file(path: str | os.PathLike, block: int = 1 << 22) -> str:
    """The CRC-32C of a file's bytes, as 8 hex digits."""
    checksum = google_crc32c.Checksum()
    with open(path, "rb") as handle:
        while data := handle.read(block):
            checksum.update(data)
    return checksum.hexdigest().decode()


def _is_array(meta: Path) -> bool:
    """Whether the ``zarr.json`` at ``meta`` describes an array (else a group, or unreadable)."""
    try:
        return json.loads(meta.read_text()).get("node_type") == "array"
    except (OSError, ValueError, AttributeError):
        return False


def listed_files(output: Path) -> Iterator[Path]:
    """The files of ``output`` that its manifest lists, relative to it (``.`` for a file):
    every file but Snakemake's marker and the chunk files of zarr arrays."""
    if not output.is_dir():
        yield Path(".")
        return
    for folder, dirs, files in os.walk(output):
        folder_path = Path(folder)
        dirs.sort()
        if "zarr.json" in files and _is_array(folder_path / "zarr.json"):
            dirs[:] = []  # the chunk files below carry their own checksums
            files = ["zarr.json"]
        for name in sorted(files):
            if name not in IGNORED:
                yield (folder_path / name).relative_to(output)


def count_rows(path: Path) -> int:
    """Data rows of a CSV or TSV table (lines after the header)."""
    with open(path, "rb") as handle:
        data = handle.read()
    lines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    return max(0, lines - 1)


def describe(written: Path) -> dict:
    """The manifest of the output at ``written``: size and CRC-32C of each listed file,
    and the data rows of each table."""
    files, rows = {}, {}
    for rel in listed_files(written):
        path = written / rel if rel != Path(".") else written
        files[rel.as_posix()] = {"size": path.stat().st_size, "crc32c": crc32c_file(path)}
        if path.suffix in TABLE_SUFFIXES:
            rows[rel.as_posix()] = count_rows(path)
    return {"format": FORMAT, "algorithm": "crc32c", "kind": "directory" if written.is_dir() else "file",
            "files": files, "rows": rows}


def write_manifest(written: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Describe the output at ``written`` (its temporary path) and store the manifest
    beside ``final`` (atomically: a killed write leaves the previous manifest or none)."""
    target = manifest_path(final)
    temp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    temp.write_text(json.dumps(describe(Path(written)), indent=1, sort_keys=True) + "\n")
    os.replace(temp, target)
    return target


def read_manifest(output: str | os.PathLike) -> dict | None:
    """The manifest of ``output``, or None when it has none (written before manifests)."""
    path = manifest_path(output)
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except ValueError:
        return {"format": FORMAT, "files": None}
    return manifest


def expected_rows(output: str | os.PathLike) -> int | None:
    """The data rows the table ``output`` had when it was written (None: not recorded)."""
    manifest = read_manifest(output)
    if not manifest or not manifest.get("files"):
        return None
    return manifest.get("rows", {}).get(".")


def problems(output: str | os.PathLike, limit: int | None = 1) -> list[tuple[Path, str]] | None:
    """``(file, what is wrong)`` for up to ``limit`` files of ``output`` that differ from its
    manifest (missing, resized, another checksum); ``[]`` when none does; None when the
    output has no manifest. A missing output has none to compare: ``[]``."""
    output = Path(output)
    manifest = read_manifest(output)
    if manifest is None:
        return None
    if not output.exists():
        return []
    if manifest.get("files") is None:
        return [(manifest_path(output), "its manifest is not valid JSON")]
    found: list[tuple[Path, str]] = []
    for rel, entry in sorted(manifest["files"].items()):
        path = output if rel == "." else output / rel
        if not path.is_file():
            found.append((path, "the file is missing"))
        elif path.stat().st_size != entry["size"]:
            found.append((path, f"{path.stat().st_size} bytes where {entry['size']} were written"))
        elif crc32c_file(path) != entry["crc32c"]:
            found.append((path, "its checksum (CRC-32C) differs from the one written at creation: the bytes changed"))
        if limit is not None and len(found) >= limit:
            break
    return found


#: outputs found intact by this process, with :func:`_stamp` then
_CHECKED: dict[Path, tuple] = {}


def _stamp(output: Path, manifest: dict) -> tuple:
    """Size and modification time of the manifest's files: unchanged, the checksums need
    not be computed again in the same process."""
    stamp = []
    for rel in sorted(manifest.get("files") or {}):
        path = output if rel == "." else output / rel
        info = path.stat() if path.is_file() else None
        stamp.append((rel, info and (info.st_size, info.st_mtime_ns)))
    return tuple(stamp)


def check_output(output: str | os.PathLike) -> None:
    """Raise :class:`DamagedOutputError` when ``output`` differs from its manifest; nothing
    when it matches or has no manifest (checked once per process while its files keep
    their size and modification time)."""
    output = Path(output)
    manifest = read_manifest(output)
    if manifest is None or not output.exists():
        return
    stamp = _stamp(output, manifest)
    if _CHECKED.get(output) == stamp:
        return
    found = problems(output)
    if found:
        path, what = found[0]
        raise DamagedOutputError(f"{path} is damaged ({what}); {repair_advice([path])}.")
    _CHECKED[output] = stamp


def outer_output(path: str | os.PathLike, stop: str | os.PathLike | None = None) -> Path:
    """The workflow output that holds ``path``: its outermost folder (itself included)
    that Snakemake marked as a directory output or that has a manifest, else the root of
    the zarr store that holds it, else ``path``. The search ends at ``stop`` (exclusive)
    when given."""
    path = Path(path)
    found = store = None
    for folder in (path, *path.parents):
        if (stop is not None and folder == Path(stop)) or not folder.name:
            break
        if (folder / ".snakemake_timestamp").is_file() or manifest_path(folder).is_file():
            found = folder
        if (folder / "zarr.json").is_file():
            store = folder
    return found or store or path


def hard_link_twins(path: Path, search: Iterable[Path]) -> list[Path]:
    """Other names of the file ``path`` (hard links with the same inode) under ``search``."""
    if not path.is_file():
        return []
    info = path.stat()
    if info.st_nlink < 2:
        return []
    twins = []
    for folder in search:
        for candidate in folder.rglob("*") if folder.is_dir() else ():
            if candidate != path and candidate.is_file():
                other = candidate.stat()
                if (other.st_ino, other.st_dev) == (info.st_ino, info.st_dev):
                    twins.append(candidate)
    return twins


def repair_targets(files: Iterable[str | os.PathLike]) -> list[Path]:
    """The outputs to delete so that the next ``snakemake`` rebuilds every damaged file of
    ``files`` from intact inputs: each file's whole output, and the outputs of its hard-link
    twins among the zarr stores next to that output (a capture shard and the assembled store)."""
    targets: list[Path] = []
    for file in map(Path, files):
        output = outer_output(file)
        nearby = {*output.parent.glob("*.zarr"), *output.parent.glob("*/*.zarr"), *output.parent.parent.glob("*.zarr")}
        search = sorted(store for store in nearby if store != output)
        for path in (output, *(outer_output(twin) for twin in hard_link_twins(file, search))):
            if path not in targets:
                targets.append(path)
    return targets


def repair_command(targets: Iterable[str | os.PathLike]) -> str:
    """The shell command that deletes ``targets`` (outputs to rebuild)."""
    return "rm -r " + " ".join(shlex.quote(str(target)) for target in targets)


def repair_advice(files: Iterable[str | os.PathLike]) -> str:
    """The end of a sentence saying how to rebuild ``files`` (see :func:`repair_targets`)."""
    return f"repair it with `{repair_command(repair_targets(files))}`, then run snakemake again"
