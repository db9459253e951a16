"""The ``corpus`` and ``capture`` sections: the capture's datasets, shards and store
layout, and their config-time checks. Imports no torch: the workflow's rule files read it
while Snakemake parses them, and the config before any job."""

from __future__ import annotations

import functools
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rsdyn.core.resources import check_memory, format_bytes, memory_limit
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


def text_lines(text: str) -> list[str]:
    """The non-empty lines of a WikiText raw text, without their newline."""
    return [line.rstrip("\n") for line in io.StringIO(text, newline=None) if line.strip()]


def filter_lengths(lines: Sequence[str], min_chars: int, max_chars: int) -> list[str]:
    """Lines strictly longer than ``min_chars`` and strictly shorter than ``max_chars``."""
    return [line for line in lines if min_chars < len(line) < max_chars]


def first_local_file(corpus: Mapping[str, Any]) -> str | None:
    """The first existing local file of the corpus settings' split, or None (the hub)."""
    candidates = corpus.get("local_candidates") or {}
    listed = candidates.get(corpus.get("split"), []) if isinstance(candidates, Mapping) else candidates
    return next((str(path) for path in listed if Path(path).is_file()), None)


@functools.lru_cache(maxsize=32)
def _kept_lines(path: str, modified: int, min_chars: int, max_chars: int) -> int | None:  # noqa: ARG001 - modified keys the cache
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None  # the corpus job names the file and the byte
    return len(filter_lengths(text_lines(text), min_chars, max_chars))


def kept_lines(path: str, min_chars: int, max_chars: int) -> int | None:
    """How many lines of the local corpus file ``path`` pass the length filter (counted
    without tokenising), or None when the file cannot be read as UTF-8 text."""
    return _kept_lines(str(path), Path(path).stat().st_mtime_ns, int(min_chars), int(max_chars))


#: tokens a character can become at most (a token may be a single byte of UTF-8), and
#: the tokens a sequence gets besides its characters (BOS, a tokenizer's space prefix)
TOKENS_PER_CHAR, EXTRA_TOKENS = 4, 2


def longest_sequence(max_chars: int) -> int:
    """Tokens a kept line (shorter than ``max_chars`` characters) can have at most."""
    return TOKENS_PER_CHAR * (max_chars - 1) + EXTRA_TOKENS


#: corpus options left out of the resolved settings while they are off, so that a run's
#: corpus (and every store and rule parameter that records it) reads as it did before the
#: option existed, and results made then are not rerun
OPTIONAL_CORPUS_KEYS = ("strip_trailing_punctuation",)


def drop_unset_options(corpus: dict) -> None:
    """Remove the :data:`OPTIONAL_CORPUS_KEYS` that are off from a corpus section, in place."""
    for key in OPTIONAL_CORPUS_KEYS:
        if not corpus.get(key, False):
            corpus.pop(key, None)


def check_corpus(corpus: Mapping[str, Any], key: str, run: Mapping[str, Any], shape) -> None:
    """Config-time checks of a corpus section (``key``: ``corpus`` or ``cae.corpus``): the
    length filter keeps lines, ``n_samples`` is at most what the local file's filter keeps,
    and no kept line can be longer than the model's context."""
    if corpus["min_chars"] + 1 >= corpus["max_chars"]:
        raise ConfigError(
            f"{key}.min_chars = {corpus['min_chars']} and {key}.max_chars = {corpus['max_chars']} keep no line; "
            "lines strictly between the two are kept, so min_chars must be at most max_chars - 2."
        )
    local = first_local_file(corpus)
    if corpus["n_samples"] is not None and local is not None:
        kept = kept_lines(local, corpus["min_chars"], corpus["max_chars"])
        if kept is not None and corpus["n_samples"] > kept:
            raise ConfigError(
                f"{key}.n_samples = {corpus['n_samples']} but only {kept} lines of {local} ({corpus['split']} split) are "
                f"strictly between {key}.min_chars = {corpus['min_chars']} and max_chars = {corpus['max_chars']} "
                f"characters; ask for at most {kept} or set n_samples to null."
            )
    context = getattr(shape, "context", None)
    if context is not None and longest_sequence(corpus["max_chars"]) > context:
        allowed = (context - EXTRA_TOKENS) // TOKENS_PER_CHAR + 1
        raise ConfigError(
            f"{key}.max_chars = {corpus['max_chars']} lets a kept line reach {longest_sequence(corpus['max_chars'])} tokens "
            f"(a token may be a single byte of UTF-8), beyond the {context}-token context of {run['model']['name']}; "
            f"use max_chars of at most {allowed}."
        )


#: bytes a batch needs per token and unit of the residual stream in a forward pass
#: without gradients (hidden state, attention projections and the MLP's hidden layer,
#: float32), and the float32 weights of a decoder per layer and unit squared
BATCH_BYTES_PER_TOKEN_UNIT, WEIGHT_BYTES_PER_LAYER_UNIT2 = 64, 48


def weights_bytes(shape) -> int:
    """The float32 weights of the model's decoder layers (12 L D^2 parameters)."""
    return WEIGHT_BYTES_PER_LAYER_UNIT2 * shape.n_layers * shape.d_model**2


def check_capture_memory(capture: Mapping[str, Any], shape) -> None:
    """``capture.max_batch_tokens`` against the memory of a capture_shard job: the model's
    float32 weights plus a batch's forward pass (64 B per token and unit). Not with
    ``capture.device: cuda``: the job's memory is then the GPU's (``auto`` means this
    machine's device, so it is checked here)."""
    if shape.d_model is None or shape.n_layers is None or capture.get("device") == "cuda":
        return  # on a GPU the batches and weights live in device memory, which the config cannot see
    weights = weights_bytes(shape)
    per_token = BATCH_BYTES_PER_TOKEN_UNIT * shape.d_model
    limit, _ = memory_limit("capture_shard")
    fits = max(0, (limit - weights) // per_token)
    check_memory(
        "capture_shard", "capture.max_batch_tokens", capture["max_batch_tokens"], weights + capture["max_batch_tokens"] * per_token,
        f"the float32 weights, {format_bytes(weights)}, and {capture['max_batch_tokens']} tokens x {shape.d_model} units x 64 B",
        f"use at most {fits} tokens per batch" if fits else "the model alone does not fit: give the job more memory (mem_mb)",
    )


def check_config(section: str, run: Mapping[str, Any], shape) -> None:
    """Config-time checks of ``run[section]``: every corpus (the run's, and the CAE's own
    when ``cae.corpus`` is set) keeps lines, holds its ``n_samples`` and fits the model's
    context (:func:`check_corpus`), and the corpus options that are off leave both corpus
    sections (:func:`drop_unset_options`); every capture can give each of its shard jobs at least
    one whole sample chunk, and a batch fits the job's memory."""
    if section == "corpus":
        for settings in (run["corpus"], run["cae"].get("corpus")):
            if settings is not None:
                drop_unset_options(settings)
        check_corpus(run["corpus"], "corpus", run, shape)
        if run["cae"].get("corpus") is not None:
            check_corpus(run["cae"]["corpus"], "cae.corpus", run, shape)
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
        check_capture_memory(run["capture"], shape)
