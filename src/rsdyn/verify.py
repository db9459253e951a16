"""Check a whole run (or any outputs) against the checksums written when they were created,
and delete what is damaged, so that the next ``snakemake`` rebuilds exactly that.

    python -m rsdyn.verify results/<run> [more runs or outputs] [--dry-run]
    snakemake verify --cores 1          (every run of the config and its model)

Checked: every output with a manifest (:mod:`rsdyn.core.manifest`: sizes and CRC-32C of
its files, rows of its tables), every zarr store (metadata readable, every chunk present
and matching its CRC-32C, or decodable where it has none), and the converted model of
each run (``--resources``, default ``resources``). A damaged file is deleted with the
whole output that holds it and with every output sharing it by a hard link (a capture
shard and the assembled ``activations.zarr``), together with their manifests. Outputs
written before rsdyn kept manifests are listed as such (their chunks are still checked).

Exit status: 0 when nothing is damaged or everything damaged was deleted; 1 with
``--dry-run`` when something is damaged (nothing is deleted then); 2 for a bad argument.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import zarr

from rsdyn.core.manifest import (
    MANIFEST_SUFFIX,
    is_manifest,
    manifest_path,
    needs_manifest,
    outer_output,
    problems,
    repair_targets,
)
from rsdyn.core.store import (
    arrays_of,
    chunk_checksum_ok,
    chunk_keys,
    has_checksums,
    ignoring_snakemake_marker,
    unreadable_metadata,
)


@dataclass
class Report:
    """What a verification found: ``damaged`` maps each damaged file to what is wrong."""

    outputs: list[Path] = field(default_factory=list)
    unsealed: list[Path] = field(default_factory=list)
    chunks: int = 0
    damaged: dict[Path, str] = field(default_factory=dict)


#: folders of a run whose files Snakemake writes itself (never checked)
SNAKEMAKE_FOLDERS = ("logs", "benchmarks")


def outputs_under(root: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """``(outputs with a manifest, zarr stores, data files without a manifest)`` at or
    under ``root`` (a store's own groups, arrays and chunks belong to the store)."""
    sealed, stores, unsealed = [], [], []
    if manifest_path(root).is_file():
        sealed.append(root)
    if root.is_file():
        return sealed, stores, ([] if sealed else [root])
    for folder, dirs, files in os.walk(root):
        folder_path = Path(folder)
        if "zarr.json" in files:
            stores.append(folder_path)
            dirs[:] = []
            continue
        dirs[:] = sorted(name for name in dirs if name not in SNAKEMAKE_FOLDERS)
        for name in sorted(files):
            path = folder_path / name
            if is_manifest(name):
                output = folder_path / name[1 : -len(MANIFEST_SUFFIX)]
                if output.exists() and output not in sealed:
                    sealed.append(output)
            elif needs_manifest(path) and not manifest_path(outer_output(path, stop=root.parent)).is_file():
                unsealed.append(path)
    return sealed, stores, unsealed


def check_store(store: Path, report: Report, seen: dict[tuple[int, int], str | None]) -> None:
    """Every metadata file and chunk of ``store`` into ``report`` (a chunk file linked from
    several stores is read once: ``seen`` maps its inode to its problem)."""
    broken = unreadable_metadata(store)
    for meta, cause in broken:
        report.damaged[meta] = f"its metadata cannot be read ({cause})"
    if broken:
        return
    with ignoring_snakemake_marker():
        arrays = list(arrays_of(zarr.open_group(str(store), mode="r")))
    for name, array in arrays:
        folder = store / array.path
        for coords, key in chunk_keys(array):
            chunk_file = folder / key
            report.chunks += 1
            if not chunk_file.is_file():
                report.damaged[chunk_file] = f"chunk {key} of array '{name}' is missing"
                continue
            info = chunk_file.stat()
            inode = (info.st_dev, info.st_ino)
            if inode not in seen:
                seen[inode] = _chunk_problem(array, coords, chunk_file)
            if seen[inode]:
                report.damaged[chunk_file] = f"chunk {key} of array '{name}': {seen[inode]}"


def _chunk_problem(array: zarr.Array, coords: tuple[int, ...], chunk_file: Path) -> str | None:
    if has_checksums(array):
        return None if chunk_checksum_ok(chunk_file) else "its CRC-32C checksum does not match its bytes"
    try:
        array.get_block_selection(coords)
    except Exception as err:  # noqa: BLE001 - any codec error means the chunk is damaged
        return f"it cannot be decoded ({type(err).__name__}: {err})"
    return None


def run_model(run_dir: Path, resources: Path) -> Path | None:
    """The converted model of the run at ``run_dir`` (named in its stores' attributes), if present."""
    for store in ("activations.zarr", "unit_stats.zarr"):
        meta = run_dir / store / "zarr.json"
        try:
            name = json.loads(meta.read_text()).get("attributes", {}).get("model_name")
        except (OSError, ValueError):
            continue
        if name and (resources / "models" / name).is_dir():
            return resources / "models" / name
    return None


def verify(paths: Iterable[str | os.PathLike], resources: str | os.PathLike | None = "resources") -> Report:
    """Check every output at or under ``paths`` (and each run's model under ``resources``)."""
    report = Report()
    roots = [Path(path) for path in paths]
    if resources is not None:
        roots += [model for root in list(roots) if (model := run_model(root, Path(resources))) and model not in roots]
    seen: dict[tuple[int, int], str | None] = {}
    for root in roots:
        sealed, stores, unsealed = outputs_under(root)
        report.unsealed += unsealed
        for output in sealed:
            report.outputs.append(output)
            for path, what in problems(output, limit=None) or []:
                report.damaged.setdefault(path, what)
        for store in stores:
            if store not in report.outputs and outer_output(store, stop=root.parent) == store:
                report.outputs.append(store)
            if not manifest_path(outer_output(store, stop=root.parent)).is_file():
                report.unsealed.append(store)
            check_store(store, report, seen)
    return report


def delete(targets: Sequence[Path]) -> None:
    """Delete each output of ``targets`` and its manifest."""
    for target in targets:
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        manifest_path(target).unlink(missing_ok=True)


def verify_workflow(paths: Sequence[str], resources: str) -> None:
    """Rule ``verify``: :func:`main` on the existing ``paths`` (every run folder and model)."""
    existing = [str(path) for path in paths if Path(path).exists()]
    if existing:
        main([*existing, "--resources", str(resources)])
    else:
        print("nothing to verify yet: no run has been built.")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rsdyn.verify",
        description="Check runs against the checksums written with their outputs; delete what is damaged "
        "so that the next snakemake rebuilds exactly that.",
    )
    parser.add_argument("paths", nargs="+", help="run folders (results/<run>) or single outputs")
    parser.add_argument("--resources", default="resources", help="resources folder holding each run's converted model (default: resources)")
    parser.add_argument("--dry-run", action="store_true", help="report only; delete nothing (exit status 1 when something is damaged)")
    args = parser.parse_args(argv)
    missing = [path for path in args.paths if not Path(path).exists()]
    if missing:
        parser.error(f"no such file or folder: {', '.join(missing)}")
    report = verify(args.paths, args.resources)
    print(f"checked {len(report.outputs)} outputs ({report.chunks} chunks) under {', '.join(args.paths)}: "
          f"{len(report.damaged)} damaged file(s)")
    for path, what in report.damaged.items():
        print(f"damaged: {path} ({what})")
    if report.unsealed:
        print(f"not checked against checksums (written before rsdyn kept them; a store's chunks were still read): "
              f"{', '.join(map(str, report.unsealed))}")
    if not report.damaged:
        return 0
    targets = repair_targets(report.damaged)
    if args.dry_run:
        print(f"to repair: rm -r {' '.join(map(str, targets))}, then run snakemake again")
        return 1
    delete(targets)
    for target in targets:
        print(f"deleted: {target}")
    print("run snakemake again to rebuild what was deleted (and everything computed from it).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
