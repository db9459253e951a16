"""The ``corpus`` and ``capture`` sections: the capture's datasets, shards and store
layout, and their config-time checks. Imports no torch: the workflow's rule files read it
while Snakemake parses them, and the config before any job."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rsdyn.core.schema import ConfigError

SECTIONS = ("corpus", "capture")

DEFAULT_SAMPLE_CHUNK = 256
DEFAULT_UNIT_CHUNK = 64
CONDITIONS = ("original", "shuffled")

#: capture settings that never change the stored numbers, left out of the store's attributes
#: so that a store does not depend on how many jobs wrote it
LAYOUT_ONLY_SETTINGS = ("shards",)


class CaptureError(ValueError):
    """The capture settings cannot be met by this corpus (one sentence naming the key)."""


def sample_blocks(start: int, stop: int, sample_chunk: int) -> list[tuple[int, int]]:
    """``(start, stop)`` row ranges of at most ``sample_chunk`` rows tiling ``start..stop``
    (``start`` must be a multiple of ``sample_chunk``: blocks are store chunks)."""
    return [(first, min(first + sample_chunk, stop)) for first in range(start, stop, sample_chunk)]


def effective_sample_chunk(n_samples: int, sample_chunk: int) -> int:
    """The store's sample chunk: ``capture.sample_chunk``, or N when N is smaller."""
    return max(1, min(int(sample_chunk), int(n_samples)))


def split_samples(n_samples: int, shards: int, sample_chunk: int) -> list[tuple[int, int]]:
    """``shards`` contiguous ``(start, stop)`` sample ranges covering ``0..n_samples``,
    each a run of whole sample chunks (the first ``n_chunks % shards`` ranges get one chunk
    more), so every shard boundary is a chunk boundary."""
    chunk = effective_sample_chunk(n_samples, sample_chunk)
    n_chunks = -(-n_samples // chunk)
    check_shards(n_samples, shards, sample_chunk)
    base, extra = divmod(n_chunks, shards)
    ranges, first = [], 0
    for index in range(shards):
        count = base + (1 if index < extra else 0)
        ranges.append((first * chunk, min((first + count) * chunk, n_samples)))
        first += count
    return ranges


def check_shards(n_samples: int, shards: int, sample_chunk: int, key: str = "capture.shards") -> None:
    """Raise CaptureError unless ``shards`` jobs can each get at least one whole sample chunk."""
    chunk = effective_sample_chunk(n_samples, sample_chunk)
    n_chunks = -(-n_samples // chunk)
    if not 1 <= shards <= n_chunks:
        raise CaptureError(
            f"{key} = {shards}, but {n_samples} sequences fill {n_chunks} sample chunk(s) of "
            f"capture.sample_chunk = {sample_chunk}; use 1 to {n_chunks} shards or a smaller sample_chunk."
        )


def store_chunks(n_samples: int, n_sublayers: int, d_model: int, settings: Mapping) -> tuple[int, int, int]:
    """Chunk shape of the activation arrays: (sample chunk, 2L, unit chunk), each at most the array's size."""
    unit_chunk = max(1, min(int(settings.get("unit_chunk", DEFAULT_UNIT_CHUNK)), d_model))
    return effective_sample_chunk(n_samples, settings.get("sample_chunk", DEFAULT_SAMPLE_CHUNK)), n_sublayers, unit_chunk


def recorded_settings(settings: Mapping) -> dict:
    """The capture settings as recorded in the store: without those that only lay out jobs."""
    return {key: value for key, value in settings.items() if key not in LAYOUT_ONLY_SETTINGS}


#: the datasets a run captures: its own corpus, and the CAE's when cae.corpus is set
DATASETS = {"activations": "corpus.npz", "cae_activations": "cae_corpus.npz"}


def dataset_corpus_settings(run_settings: Mapping, dataset: str) -> dict:
    """The corpus settings of a dataset of a run (``activations`` or ``cae_activations``)."""
    return run_settings["corpus"] if dataset == "activations" else run_settings["cae"]["corpus"]


def dataset_shards(run_settings: Mapping, dataset: str) -> int:
    """Capture shard jobs of a dataset: ``capture.shards``, or for the CAE's own corpus
    ``cae.capture_shards`` when set."""
    if dataset == "cae_activations":
        return int(run_settings["cae"].get("capture_shards") or run_settings["capture"]["shards"])
    return int(run_settings["capture"]["shards"])


def dataset_conditions(run_settings: Mapping, dataset: str) -> list[str]:
    """Conditions a dataset records: both for activations.zarr (the data contract), only
    the one the CAE trains on for the CAE's own corpus."""
    if dataset == "cae_activations":
        return [run_settings["cae"].get("condition", "original")]
    return list(CONDITIONS)


def shard_job_settings(run_settings: Mapping, dataset: str) -> dict:
    """The capture settings of a dataset's shard jobs (with that dataset's shard count)."""
    return {**run_settings["capture"], "shards": dataset_shards(run_settings, dataset)}


#: corpus options left out of the resolved settings while they are off, so that a run's
#: corpus (and every store and rule parameter that records it) reads as it did before the
#: option existed, and results made then are not rerun
OPTIONAL_CORPUS_KEYS = ("strip_trailing_punctuation",)


def drop_unset_options(corpus: dict) -> None:
    """Remove the :data:`OPTIONAL_CORPUS_KEYS` that are off from a corpus section, in place."""
    for key in OPTIONAL_CORPUS_KEYS:
        if not corpus.get(key, False):
            corpus.pop(key, None)


def check_config(section: str, run: Mapping[str, Any], shape) -> None:  # noqa: ARG001 - same signature for every stage
    """Config-time checks of ``run[section]``: the corpus's length filter keeps lines, and
    every capture (the run's corpus; the CAE's own corpus when ``cae.corpus`` is set) can
    give each of its shard jobs at least one whole sample chunk. The corpus options that
    are off leave both corpus sections (:func:`drop_unset_options`)."""
    if section == "corpus":
        corpus = run["corpus"]
        for settings in (corpus, run["cae"].get("corpus")):
            if settings is not None:
                drop_unset_options(settings)
        if corpus["min_chars"] + 1 >= corpus["max_chars"]:
            raise ConfigError(
                f"corpus.min_chars = {corpus['min_chars']} and corpus.max_chars = {corpus['max_chars']} keep no line; "
                "lines strictly between the two are kept, so min_chars must be at most max_chars - 2."
            )
    if section == "capture":
        cae_corpus = run["cae"].get("corpus")
        captures = [("capture.shards", run["corpus"]["n_samples"], run["capture"]["shards"])]
        if cae_corpus is not None:
            captures.append(("cae.capture_shards", cae_corpus["n_samples"], dataset_shards(run, "cae_activations")))
        for key, n_samples, shards in captures:
            if n_samples is not None:
                try:
                    check_shards(n_samples, shards, run["capture"]["sample_chunk"], key)
                except CaptureError as err:
                    raise ConfigError(str(err)) from None
