"""Capture stage: record the residual stream at the two hook sites of every layer.

Forward pre-hooks on each layer's pre-attn and pre-MLP modules record their input (the
residual stream) at one position per sequence (the last real token) and nothing else;
the hooks are removed in ``finally``. Batches are right-padded and bucketed by length.

The store is written as it is computed: the sequences are taken in blocks of
``capture.sample_chunk`` rows (the store's sample chunk), each block is batched on its
own rows only and written into its chunks before the next block starts, so memory holds
the model, one batch and one block whatever N is. ``capture.shards`` = K splits the
blocks into K contiguous sample ranges, one job (and store) each; ``assemble_store``
joins them into the one ``activations.zarr`` of the data contract by hard-linking their
chunk files. Because a block's batches depend only on the block's rows, and every shard
boundary is a block boundary, every row goes through exactly the same batches for any K:
the store is bit-for-bit the same for K = 1 and K = 3. (Batch composition does change
float results here: a row computed in a batch of 5 differs from the same row in a batch
of 24 by ~1e-7 relative on CPU, so this alignment is what makes K invisible.)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from rsdyn.adapters import base_model, hook_sites
from rsdyn.jobs import progress
from rsdyn.store import create_array

log = logging.getLogger(__name__)


class ResidualRecorder:
    """Context manager that records the residual stream at every sublayer.

    Set ``positions`` (LongTensor (B,), one index per row) before each forward; after
    it, ``states`` is a float32 tensor (B, 2L, D): sublayer 2l = input of layer l's
    pre-attn site, 2l+1 = input of its pre-MLP site, at those positions.
    ``positions=None`` records every position: ``states`` is then (B, T, 2L, D).
    """

    def __init__(self, model: torch.nn.Module, family: str = "auto"):
        self.sites = hook_sites(model, family)
        self.n_sublayers = 2 * len(self.sites)
        self.positions: torch.Tensor | None = None
        self.states: torch.Tensor | None = None
        self._handles: list = []

    def _hook(self, sublayer: int):
        def record(module, args, kwargs):  # noqa: ARG001 - hook signature
            hidden = args[0] if args else kwargs["hidden_states"]
            if self.positions is None:
                picked = hidden
            else:
                rows = torch.arange(hidden.shape[0], device=hidden.device)
                picked = hidden[rows, self.positions.to(hidden.device)]
            if self.states is None or self.states.shape[0] != hidden.shape[0] or self._fresh:
                shape = (*picked.shape[:-1], self.n_sublayers, picked.shape[-1])
                self.states = torch.empty(shape, dtype=torch.float32, device=hidden.device)
                self._fresh = False
            self.states[..., sublayer, :] = picked.float()

        return record

    def reset(self) -> None:
        """Start a new forward: the next recorded value allocates fresh storage."""
        self._fresh = True

    def __enter__(self) -> ResidualRecorder:
        self._fresh = True
        try:
            for layer, (pre_attn, pre_mlp) in enumerate(self.sites):
                self._handles.append(pre_attn.register_forward_pre_hook(self._hook(2 * layer), with_kwargs=True))
                self._handles.append(pre_mlp.register_forward_pre_hook(self._hook(2 * layer + 1), with_kwargs=True))
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __exit__(self, *exc) -> None:
        self.remove()


def make_batches(
    lengths: Sequence[int], max_batch_tokens: int, max_batch_size: int, bucket_by_length: bool = True
) -> list[np.ndarray]:
    """Group sequence indices into batches of at most ``max_batch_tokens`` padded tokens.

    With ``bucket_by_length`` the sequences are sorted by length first, so each batch
    pads little; otherwise they are taken in corpus order. Every index appears once.
    """
    lengths = np.asarray(lengths)
    order = np.argsort(lengths, kind="stable") if bucket_by_length else np.arange(len(lengths))
    batches, current, longest = [], [], 0
    for index in order:
        new_longest = max(longest, int(lengths[index]))
        if current and (new_longest * (len(current) + 1) > max_batch_tokens or len(current) >= max_batch_size):
            batches.append(np.asarray(current))
            current, new_longest = [], int(lengths[index])
        current.append(int(index))
        longest = new_longest
    if current:
        batches.append(np.asarray(current))
    return batches


def pad_batch(sequences: Sequence[np.ndarray], pad_token: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``(input_ids, attention_mask, last_position)`` for a list of id arrays."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_token, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        attention_mask[row, : len(seq)] = 1
    last = torch.as_tensor([len(s) - 1 for s in sequences], dtype=torch.long)
    return input_ids, attention_mask, last


DEFAULT_SAMPLE_CHUNK = 256
DEFAULT_UNIT_CHUNK = 64
CONDITIONS = ("original", "shuffled")
#: capture settings that never change the stored numbers, left out of the store's attributes
#: so that a store does not depend on how many jobs wrote it
LAYOUT_ONLY_SETTINGS = ("shards",)


class CaptureError(ValueError):
    """The capture settings cannot be met by this corpus (one sentence naming the key)."""


def _forward_rows(
    model: torch.nn.Module,
    recorder: ResidualRecorder,
    sequences: Sequence[np.ndarray],
    out: np.ndarray | None,
    *,
    max_batch_tokens: int,
    max_batch_size: int,
    bucket_by_length: bool,
    pad_token: int,
    bar,
) -> np.ndarray:
    """Residual stream of the last real token of ``sequences`` into ``out`` (allocated when
    None): float32 (n, 2L, D) in input order. Batches are formed from these rows only."""
    device = next(model.parameters()).device
    decoder = base_model(model)
    for batch in make_batches([len(s) for s in sequences], max_batch_tokens, max_batch_size, bucket_by_length):
        input_ids, attention_mask, last = pad_batch([sequences[i] for i in batch], pad_token)
        recorder.reset()
        recorder.positions = last.to(device)
        decoder(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False)
        states = recorder.states.cpu().numpy()
        if out is None:
            out = np.empty((len(sequences), *states.shape[1:]), dtype=np.float32)
        out[batch] = states
        bar.update(len(batch))
    return out


def _check_sequences(sequences: Sequence[np.ndarray]) -> None:
    if not len(sequences):
        raise ValueError("No sequences to capture.")
    if any(len(s) == 0 for s in sequences):
        raise ValueError("A sequence of length 0 cannot be captured.")


@torch.inference_mode()
def capture_last_token(
    model: torch.nn.Module,
    sequences: Sequence[np.ndarray],
    *,
    family: str = "auto",
    max_batch_tokens: int = 8192,
    max_batch_size: int = 64,
    bucket_by_length: bool = True,
    pad_token: int = 0,
    desc: str = "capture",
) -> np.ndarray:
    """Residual stream of the last real token of each sequence: float32 (N, 2L, D), in memory.

    Runs the base model only (no LM head) in the model's dtype and device; the result is
    in the input order whatever the batching. ``capture_blocks`` is the streamed form.
    """
    _check_sequences(sequences)
    with ResidualRecorder(model, family) as recorder, progress(total=len(sequences), desc=desc, unit="seq") as bar:
        return _forward_rows(
            model, recorder, sequences, None, max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size,
            bucket_by_length=bucket_by_length, pad_token=pad_token, bar=bar,
        )


@torch.inference_mode()
def capture_blocks(
    model: torch.nn.Module,
    sequences: Sequence[np.ndarray],
    blocks: Sequence[tuple[int, int]],
    *,
    family: str = "auto",
    max_batch_tokens: int = 8192,
    max_batch_size: int = 64,
    bucket_by_length: bool = True,
    pad_token: int = 0,
    desc: str = "capture",
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, states)`` for each ``(start, stop)`` row range of ``blocks``, in order:
    float32 (stop - start, 2L, D) of ``sequences[start:stop]``, batched (and bucketed by
    length) within the block only, so a row's batch never depends on rows outside its block.
    One block's buffer is reused: copy or write it before asking for the next."""
    _check_sequences(sequences)
    total = sum(stop - start for start, stop in blocks)
    buffer: np.ndarray | None = None
    with ResidualRecorder(model, family) as recorder, progress(total=total, desc=desc, unit="seq") as bar:
        for start, stop in blocks:
            rows = sequences[start:stop]
            _check_sequences(rows)
            out = buffer[: stop - start] if buffer is not None and len(buffer) >= stop - start else None
            out = _forward_rows(
                model, recorder, rows, out, max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size,
                bucket_by_length=bucket_by_length, pad_token=pad_token, bar=bar,
            )
            if buffer is None:
                buffer = out
            yield start, out


# --------------------------------------------------------------------------- layout


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


# --------------------------------------------------------------------------- stores


def _load(model_dir: str, settings: Mapping, model_settings: Mapping):
    from rsdyn.adapters import adapter_for, model_family
    from rsdyn.models import load_model, resolve_device, resolve_dtype

    device = resolve_device(settings["device"], "capture.device")
    dtype = resolve_dtype(settings["dtype"], device)
    model, tokenizer, _ = load_model(model_dir, device=device, dtype=dtype)
    family = model_family(model, model_settings.get("family", "auto"))
    adapter_for(family)
    pad_token = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return model, family, device, dtype, pad_token


def _capture_into(group, model, corpus, start: int, stop: int, settings: Mapping, family: str, pad_token: int, n_total: int,
                  conditions: Sequence[str] = CONDITIONS) -> tuple[int, int]:
    """Capture rows ``start..stop`` of ``conditions`` block by block into arrays of ``group``
    (rows counted from ``start``); returns (2L, D)."""
    sample_chunk = effective_sample_chunk(n_total, settings.get("sample_chunk", DEFAULT_SAMPLE_CHUNK))
    blocks = sample_blocks(start, stop, sample_chunk)
    shape = None
    for condition in conditions:
        array = None
        stream = capture_blocks(
            model, corpus.rows(condition), blocks, family=family, max_batch_tokens=settings["max_batch_tokens"],
            max_batch_size=settings["max_batch_size"], bucket_by_length=settings["bucket_by_length"],
            pad_token=pad_token, desc=f"capture {condition}",
        )
        for first, states in stream:
            if not np.isfinite(states).all():
                bad = first + int(np.flatnonzero(~np.isfinite(states).all(axis=(1, 2)))[0])
                raise FloatingPointError(f"The {condition} capture has non-finite values (sample {bad}, compute dtype {model.dtype}).")
            if array is None:
                from rsdyn.store import create_streamed_array

                shape = states.shape[1:]
                chunks = store_chunks(n_total, *shape, settings)
                array = create_streamed_array(group, condition, (stop - start, *shape), chunks)
            array[first - start : first - start + len(states)] = states
    return shape


def _store_attrs(model_settings: Mapping, family: str, dtype, device: str, n_layers: int, d_model: int, n_samples: int) -> dict:
    from rsdyn.adapters import sublayer_names

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
) -> None:
    """Capture both conditions of a corpus file into a zarr store, streamed and atomic.

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
    from rsdyn.corpus import load_corpus
    from rsdyn.store import streamed_group

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
        n_sublayers, d_model = _capture_into(group, model, corpus, start, stop, settings, family, pad_token, n_total, conditions)
        base = _store_attrs(model_settings, family, dtype, device, n_sublayers // 2, d_model, n_total)
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
    hard-links every chunk file to its place (``rsdyn.store.link_chunks``): it costs one
    link per chunk and no extra disk, whatever N is, where a read-and-rewrite gather
    would cost a full copy (105 GB per condition at the paper's CAE size). The result is
    byte-identical to what a single job writes. Checks that the shards tile the samples
    and agree on model, shape and chunking.
    """
    from rsdyn.corpus import load_corpus
    from rsdyn.store import create_streamed_array, ignoring_snakemake_marker, link_chunks, open_group, streamed_group

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


# --------------------------------------------------------------------------- workflow helpers

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
