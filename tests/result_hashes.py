"""Hashes of every number a run writes, independent of rsdyn's module layout.

``result_hashes(run_dir)`` maps each output of ``results/{run}/`` to a SHA-256: the bytes
of ``summary.json`` and ``summary.tsv`` as written; for every zarr store, the dtype, shape
and C-order bytes of each array and the attributes of each node (wall-clock timings
left out); for other data files (CSV, JSON, YAML, NPZ, weights) their bytes, or their
rows and keys without timing fields where a file records a duration; safetensors by
their tensors and metadata (the header's key order varies between processes). Figures, logs and
benchmark timings are not numbers of the science and are left out, and so are the
checksum manifests (``.NAME.rsdyn-manifest.json``) beside the outputs.

A golden list (``tests/fixtures/smoke_hashes.json``) pins the smoke run: a change that
moves any number fails ``tests/test_layout.py``. After a change meant to move numbers,
regenerate it from a fresh smoke run and say why in the commit:

    python tests/result_hashes.py <workdir>/results/smoke > tests/fixtures/smoke_hashes.json
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import platform
import sys
import warnings
from pathlib import Path

import numpy as np

TIMING_WORDS = ("second", "elapsed", "duration", "wall", "time")
SKIPPED_DIRS = {"logs", "benchmarks", "figures"}
RAW_FILES = {"summary.json", "summary.tsv"}


def is_timing(name: str) -> bool:
    return any(word in str(name).lower() for word in TIMING_WORDS)


def without_timings(value):
    """A parsed JSON value with every key that names a wall-clock time removed."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if not is_timing(k)}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def _digest(*parts: bytes) -> str:
    sha = hashlib.sha256()
    for part in parts:
        sha.update(part)
        sha.update(b"\0")
    return sha.hexdigest()


def _json_digest(value) -> str:
    return _digest(json.dumps(without_timings(value), sort_keys=True, default=str).encode())


def _table_digest(path: Path) -> str:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t" if path.suffix == ".tsv" else ","))
    if rows:
        keep = [i for i, name in enumerate(rows[0]) if not is_timing(name)]
        rows = [[row[i] for i in keep if i < len(row)] for row in rows]
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return _digest(out.getvalue().encode())


def _zarr_hashes(store: Path, label: str) -> dict[str, str]:
    import zarr

    hashes: dict[str, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root = zarr.open_group(str(store), mode="r")

        def visit(group, prefix: str) -> None:
            hashes[f"{label}/{prefix}@attrs"] = _json_digest(dict(group.attrs))
            for name, array in sorted(group.arrays()):
                data = np.ascontiguousarray(array[...])
                hashes[f"{label}/{prefix}{name}"] = _digest(str(data.dtype).encode(), str(data.shape).encode(), data.tobytes())
                hashes[f"{label}/{prefix}{name}@attrs"] = _json_digest(dict(array.attrs))
            for name, sub in sorted(group.groups()):
                visit(sub, f"{prefix}{name}/")

        visit(root, "")
    return hashes


def _safetensors_digest(path: Path) -> str:
    """Tensors and metadata of a safetensors file: its header's key order is not stable
    between processes (the writer's hash map), so the bytes are not."""
    from safetensors import safe_open

    with safe_open(str(path), "np") as handle:
        parts = [json.dumps(handle.metadata() or {}, sort_keys=True).encode()]
        for key in sorted(handle.keys()):
            tensor = np.ascontiguousarray(handle.get_tensor(key))
            parts += [key.encode(), str(tensor.dtype).encode(), str(tensor.shape).encode(), tensor.tobytes()]
    return _digest(*parts)


def _is_zarr(path: Path) -> bool:
    return path.is_dir() and (path / "zarr.json").is_file()


def result_hashes(run_dir: str | Path) -> dict[str, str]:
    """``{relative output path (or store/array): sha256}`` for one run folder."""
    run_dir = Path(run_dir)
    hashes: dict[str, str] = {}

    def walk(folder: Path) -> None:
        for path in sorted(folder.iterdir()):
            rel = path.relative_to(run_dir).as_posix()
            if path.name in SKIPPED_DIRS or path.name == ".snakemake_timestamp" or path.name.endswith(".rsdyn-manifest.json"):
                continue
            if _is_zarr(path):
                hashes.update(_zarr_hashes(path, rel))
            elif path.is_dir():
                walk(path)
            elif path.name in RAW_FILES:
                hashes[rel] = _digest(path.read_bytes())
            elif path.suffix in (".csv", ".tsv"):
                hashes[rel] = _table_digest(path)
            elif path.suffix == ".safetensors":
                hashes[rel] = _safetensors_digest(path)
            elif path.suffix == ".json":
                hashes[rel] = _json_digest(json.loads(path.read_text()))
            else:
                hashes[rel] = _digest(path.read_bytes())

    walk(run_dir)
    return hashes


def platform_signature() -> dict[str, str]:
    """What byte-identical floating point depends on besides the code: the CPU's vector
    instruction set as torch dispatches it, and the numerical libraries' versions."""
    import scipy
    import torch

    return {
        "machine": platform.machine(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "python": platform.python_version(),
    }


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise SystemExit("usage: python tests/result_hashes.py RESULTS/RUN > tests/fixtures/smoke_hashes.json")
    document = {"platform": platform_signature(), "hashes": result_hashes(argv[0])}
    json.dump(document, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1:])
