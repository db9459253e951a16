"""Capture stage entries, one per rule: build a corpus file (:func:`run_corpus`, rules
``corpus`` and ``cae_corpus``), stream one shard of it through the model into its store
(:func:`capture_store`, rule ``capture_shard``) and join the shard stores into the one
``activations.zarr`` of the data contract (:func:`assemble_store`, rule ``capture``).

The store is written as it is computed: the sequences are taken in blocks of
``capture.sample_chunk`` rows (the store's sample chunk), each block is batched on its
own rows only and handed to a writer thread that checks, compresses and writes it while
the next block is computed (:func:`capture_into`), so memory holds the model, one batch
and at most three blocks (one computed, one waiting, one being written) whatever N is.
``capture.shards`` = K splits the
blocks into K contiguous sample ranges, one job (and store) each; ``assemble_store``
joins them by hard-linking their chunk files. Because a block's batches depend only on
the block's rows, and every shard boundary is a block boundary, every row goes through
exactly the same batches for any K: the store is bit-for-bit the same for K = 1 and
K = 3. (Batch composition does change float results: a row computed in a batch of 5
differs from the same row in a batch of 24 by ~1e-7 relative on CPU, so this alignment
is what makes K invisible.)"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from rsdyn.capture.capture import capture_blocks
from rsdyn.core.store import create_array

log = logging.getLogger(__name__)

from rsdyn.capture.settings import (
    CONDITIONS,
    DEFAULT_SAMPLE_CHUNK,
    CaptureError,
    effective_sample_chunk,
    recorded_settings,
    sample_blocks,
    split_samples,
    store_chunks,
)


def _load(model_dir: str, settings: Mapping, model_settings: Mapping):
    from rsdyn.models.adapters import adapter_for, model_family
    from rsdyn.models.weights import load_model, resolve_device, resolve_dtype

    device = resolve_device(settings["device"], "capture.device")
    dtype = resolve_dtype(settings["dtype"], device)
    model, tokenizer, _ = load_model(model_dir, device=device, dtype=dtype)
    family = model_family(model, model_settings.get("family", "auto"))
    adapter_for(family)
    pad_token = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return model, family, device, dtype, pad_token


class _ConditionWriter:
    """Writes one condition's blocks into its array of ``group`` (created at the first
    block, whose shape it takes); runs on the writer thread, in block order."""

    def __init__(self, group, condition: str, start: int, stop: int, n_total: int, settings: Mapping, dtype):
        self.group, self.condition, self.start, self.stop = group, condition, start, stop
        self.n_total, self.settings, self.dtype = n_total, settings, dtype
        self.array = None

    def __call__(self, first: int, pending) -> None:
        states = pending.wait()
        finite = np.isfinite(states).all(axis=(1, 2))
        if not finite.all():
            bad = first + int(np.flatnonzero(~finite)[0])
            raise FloatingPointError(f"The {self.condition} capture has non-finite values (sample {bad}, compute dtype {self.dtype}).")
        if self.array is None:
            from rsdyn.core.store import create_streamed_array

            shape = states.shape[1:]
            chunks = store_chunks(self.n_total, *shape, self.settings)
            self.array = create_streamed_array(self.group, self.condition, (self.stop - self.start, *shape), chunks)
        self.array[first - self.start : first - self.start + len(states)] = states


def capture_into(group, model, corpus, start: int, stop: int, settings: Mapping, family: str, pad_token: int, n_total: int,
                 conditions: Sequence[str] = CONDITIONS, staged: bool | None = None) -> tuple[int, int]:
    """Capture rows ``start..stop`` of ``conditions`` of ``corpus`` block by block into
    arrays of the zarr ``group`` (rows counted from ``start``); returns (2L, D).

    The pipeline: while the device runs the forwards of block k + 1, block k travels to
    the host (:mod:`rsdyn.capture.pipeline`) and a writer thread checks it for non-finite
    values, compresses it and writes its chunks (:class:`rsdyn.core.threads.BackgroundWriter`,
    one block waiting at most). The values written are those of a serial capture, bit for
    bit. An error of the writer is raised here, and nothing more is written after it."""
    from rsdyn.core.threads import BackgroundWriter

    sample_chunk = effective_sample_chunk(n_total, settings.get("sample_chunk", DEFAULT_SAMPLE_CHUNK))
    blocks = sample_blocks(start, stop, sample_chunk)
    shape = None
    with BackgroundWriter(depth=1, name="rsdyn-capture-writer") as writer:
        for condition in conditions:
            write = _ConditionWriter(group, condition, start, stop, n_total, settings, model.dtype)
            stream = capture_blocks(
                model, corpus.rows(condition), blocks, family=family, max_batch_tokens=settings["max_batch_tokens"],
                max_batch_size=settings["max_batch_size"], bucket_by_length=settings["bucket_by_length"],
                pad_token=pad_token, desc=f"capture {condition}", staged=staged,
            )
            with contextlib.closing(stream):  # the recorder's hooks go as soon as the loop ends
                for first, pending in stream:
                    shape = pending.shape[1:]
                    writer.submit(write, first, pending)
    return shape


def _store_attrs(model_settings: Mapping, family: str, dtype, device: str, n_layers: int, d_model: int, n_samples: int) -> dict:
    from rsdyn.models.adapters import sublayer_names

    return {
        "model_name": model_settings["name"],
        "model_id": model_settings.get("id") or model_settings.get("pypi_key") or model_settings.get("path"),
        "model_revision": model_settings.get("revision", "main"),
        "model_source": model_settings["source"],
        "family": family,
        "dtype": str(dtype).removeprefix("torch."),
        "device": device,
        "n_layers": n_layers,
        "d_model": d_model,
        "n_samples": n_samples,
        "sublayer_names": sublayer_names(n_layers),
    }


#: what the converted folder's rsdyn_model.json records of the weights' origin, copied into
#: the store's attributes when present: the GGUF's provenance, the extra quantisation dose
PROVENANCE_ATTRS = ("gguf", "requantisation")


def weights_provenance_attrs(model_dir: str | Path) -> dict:
    """The :data:`PROVENANCE_ATTRS` entries of a converted model folder's ``rsdyn_model.json``
    (``gguf``: the GGUF's metadata, tensor types and SHA-256; ``requantisation``: the
    record of ``model.requantise``); none for other sources or older conversions."""
    import json

    path = Path(model_dir) / "rsdyn_model.json"
    recorded = json.loads(path.read_text()) if path.is_file() else {}
    return {key: recorded[key] for key in PROVENANCE_ATTRS if key in recorded}


def _contract_attrs(base: Mapping, corpus, settings: Mapping, model_settings: Mapping, corpus_settings: Mapping | None) -> dict:
    return {
        **base,
        "texts": corpus.texts,
        "corpus_source": corpus.source,
        "config": {"model": dict(model_settings), "corpus": dict(corpus_settings or {}), "capture": recorded_settings(settings)},
    }


def _write_ids(group, corpus, conditions: Sequence[str] = CONDITIONS) -> None:
    for condition in conditions:
        ids = corpus.original_ids if condition == "original" else corpus.shuffled_ids
        create_array(group, f"{condition}_ids", data=ids, chunks=ids.shape)


def capture_store(
    model_dir: str,
    corpus_path: str,
    out_path: str,
    settings: dict,
    model_settings: dict,
    corpus_settings: dict | None = None,
    shard: int | None = None,
    conditions: Sequence[str] = CONDITIONS,
    threads: int | None = None,
) -> None:
    """Rule ``capture_shard``: capture both conditions of a corpus file into a zarr store,
    streamed and atomic (on ``threads`` CPU threads when given).

    ``shard=None``: every sequence into ``activations.zarr`` as the data contract says:
    ``original`` and ``shuffled`` (N, 2L, D) float32 in tiles of (``sample_chunk``, 2L,
    ``unit_chunk``), ``original_ids`` and ``shuffled_ids`` (N, max_len) int32
    right-padded with -1, and the contract's attributes. ``shard=k``: only the k-th of
    ``settings["shards"]`` sample ranges (``split_samples``), as a shard store holding the
    two activation arrays of its rows and attributes ``sample_start``/``sample_stop``;
    ``assemble_store`` joins the shards. Each sample block is written as soon as it is
    computed; the store appears under ``out_path`` only when complete. ``conditions``
    limits the capture to some conditions (the CAE's own corpus needs only the one it
    trains on).
    """
    unknown = sorted(set(conditions) - set(CONDITIONS))
    if unknown or not conditions:
        raise CaptureError(f"capture conditions {list(conditions)}; allowed: {', '.join(CONDITIONS)} (at least one).")
    from rsdyn.capture.corpus import load_corpus
    from rsdyn.core.store import streamed_group

    if threads:
        import torch

        torch.set_num_threads(threads)
    corpus = load_corpus(corpus_path)
    n_total = len(corpus.texts)
    sample_chunk = int(settings.get("sample_chunk", DEFAULT_SAMPLE_CHUNK))
    shards = int(settings.get("shards", 1)) if shard is not None else 1
    if shard is not None and not 0 <= shard < shards:
        raise CaptureError(f"capture shard {shard} does not exist: capture.shards = {shards} numbers them 0 to {shards - 1}.")
    start, stop = split_samples(n_total, shards, sample_chunk)[shard or 0]
    model, family, device, dtype, pad_token = _load(model_dir, settings, model_settings)
    log.info("capturing sequences %d-%d of %d on %s in %s (%s family)", start, stop - 1, n_total, device, dtype, family)
    with streamed_group(out_path) as group:
        n_sublayers, d_model = capture_into(group, model, corpus, start, stop, settings, family, pad_token, n_total, conditions)
        base = {**_store_attrs(model_settings, family, dtype, device, n_sublayers // 2, d_model, n_total),
                **weights_provenance_attrs(model_dir)}
        if shard is None:
            _write_ids(group, corpus, conditions)
            group.attrs.update(_contract_attrs(base, corpus, settings, model_settings, corpus_settings))
        else:
            group.attrs.update({**base, "shard": shard, "shards": shards, "sample_start": start, "sample_stop": stop,
                                "capture": recorded_settings(settings)})


def assemble_store(shard_paths: Sequence[str | Path], corpus_path: str, out_path: str, settings: dict, model_settings: dict, corpus_settings: dict | None = None) -> None:
    """Join the shard stores of ``capture_store(..., shard=k)`` into one ``activations.zarr``.

    Why links and not a gather: the shards' sample ranges are runs of whole chunks of the
    same chunk grid, so each shard chunk *is* a chunk of the final array, bytes and all.
    The assembly creates the final arrays with the shards' chunking and codecs and
    hard-links every chunk file to its place (``rsdyn.core.store.link_chunks``): it costs one
    link per chunk and no extra disk, whatever N is, where a read-and-rewrite gather
    would cost a full copy (105 GB per condition at the paper's CAE size). The result is
    byte-identical to what a single job writes. Checks that the shards tile the samples
    and agree on model, shape and chunking.
    """
    from rsdyn.capture.corpus import load_corpus
    from rsdyn.core.store import (
        create_streamed_array,
        ignoring_snakemake_marker,
        link_chunks,
        open_group,
        streamed_group,
    )

    corpus = load_corpus(corpus_path)
    n_total = len(corpus.texts)
    with ignoring_snakemake_marker():
        shards = sorted((open_group(path) for path in shard_paths), key=lambda group: int(group.attrs["sample_start"]))
        if not shards:
            raise CaptureError("assemble_store needs at least one shard store.")
        expected = 0
        for group in shards:
            if int(group.attrs["sample_start"]) != expected:
                raise CaptureError(f"capture shards do not tile the samples: a shard starts at {group.attrs['sample_start']} where {expected} was expected.")
            expected = int(group.attrs["sample_stop"])
        if expected != n_total:
            raise CaptureError(f"capture shards cover samples 0-{expected - 1} but the corpus has {n_total} sequences.")
        keys = ("model_name", "family", "dtype", "n_layers", "d_model", "n_samples")
        first = dict(shards[0].attrs)
        for group in shards[1:]:
            if any(group.attrs.get(key) != first.get(key) for key in keys):
                raise CaptureError("capture shards disagree on the model, dtype or sample count; rerun them with one configuration.")
        base = {key: first[key] for key in first if key not in ("shard", "shards", "sample_start", "sample_stop", "capture")}
        conditions = [condition for condition in CONDITIONS if condition in shards[0]]
        if any(sorted(group.array_keys()) != sorted(conditions) for group in shards):
            raise CaptureError("capture shards hold different conditions; rerun them with one configuration.")
        with streamed_group(out_path) as out:
            for condition in conditions:
                template = shards[0][condition]
                target = create_streamed_array(out, condition, (n_total, *template.shape[1:]), template.chunks, template.dtype)
                for group in shards:
                    offset = int(group.attrs["sample_start"]) // template.chunks[0]
                    link_chunks(group[condition], target, (offset, 0, 0))
            _write_ids(out, corpus, conditions)
            out.attrs.update(_contract_attrs(base, corpus, settings, model_settings, corpus_settings))


def run_corpus(model_dir: str | Path, settings: Mapping, out_path: str | Path) -> None:
    """Rules ``corpus`` and ``cae_corpus``: the filtered, subsampled texts of ``settings``
    (a ``corpus`` section), tokenised with the converted model's tokenizer, with their
    shuffled condition -> ``corpus.npz``."""
    from transformers import AutoTokenizer

    from rsdyn.capture.corpus import build_corpus, save_corpus

    corpus = build_corpus(settings, AutoTokenizer.from_pretrained(model_dir))
    save_corpus(corpus, out_path)
    log.info("wrote %d sequences (max %d tokens) to %s", len(corpus.texts), corpus.lengths.max(), out_path)
