"""activations.zarr as the data contract says, and nothing left by an interrupted capture."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from conftest import tiny_llama
from rsdyn import capture
from rsdyn.corpus import build_corpus, save_corpus
from rsdyn.store import read_group
from test_models import save_tiny_tokenizer

CAPTURE = {"device": "cpu", "dtype": "auto", "max_batch_tokens": 512, "max_batch_size": 4,
           "bucket_by_length": True, "unit_chunk": 8}
MODEL = {"source": "local", "name": "tiny", "path": "unused", "family": "auto"}


@pytest.fixture
def inputs(tmp_path, char_tokenizer):
    model_dir = tmp_path / "model"
    tiny_llama(n_layers=3, hidden=32).save_pretrained(model_dir)
    save_tiny_tokenizer(model_dir)
    text = tmp_path / "wiki.raw"
    text.write_text("\n".join(f"{chr(97 + i)} " * (5 + 3 * i) for i in range(6)) + "\n")
    settings = {"local_candidates": {"test": [str(text)]}, "hf_dataset": "", "hf_config": "", "split": "test",
                "min_chars": 5, "max_chars": 100, "n_samples": None, "seed": 0}
    corpus = build_corpus(settings, char_tokenizer)
    save_corpus(corpus, tmp_path / "corpus.npz")
    return model_dir, tmp_path / "corpus.npz", corpus


def test_store_layout_and_attributes(inputs, tmp_path):
    model_dir, corpus_path, corpus = inputs
    out = tmp_path / "activations.zarr"
    capture.capture_store(str(model_dir), str(corpus_path), str(out), CAPTURE, MODEL, {"seed": 0})
    group = zarr.open_group(str(out), mode="r")
    n = len(corpus.texts)
    for condition in ("original", "shuffled"):
        assert group[condition].shape == (n, 6, 32) and group[condition].dtype == np.float32
        assert group[condition].chunks == (n, 6, 8)
        assert group[f"{condition}_ids"].dtype == np.int32
    np.testing.assert_array_equal(group["shuffled_ids"][...], corpus.shuffled_ids)
    attrs = dict(group.attrs)
    assert attrs["n_layers"] == 3 and attrs["d_model"] == 32 and attrs["dtype"] == "float32"
    assert attrs["sublayer_names"][:3] == ["L0.pre_attn", "L0.pre_mlp", "L1.pre_attn"]
    assert attrs["texts"] == corpus.texts and attrs["config"]["capture"] == CAPTURE
    arrays = read_group(out)
    assert not np.allclose(arrays["original"], arrays["shuffled"])
    assert np.isfinite(arrays["original"]).all()


def test_interrupted_capture_leaves_no_store(inputs, tmp_path, monkeypatch):
    model_dir, corpus_path, _ = inputs
    real = capture.capture_last_token

    def dies_on_shuffled(model, sequences, **kwargs):
        if kwargs["desc"].endswith("shuffled"):
            raise KeyboardInterrupt
        return real(model, sequences, **kwargs)

    monkeypatch.setattr(capture, "capture_last_token", dies_on_shuffled)
    out = tmp_path / "results" / "activations.zarr"
    with pytest.raises(KeyboardInterrupt):
        capture.capture_store(str(model_dir), str(corpus_path), str(out), CAPTURE, MODEL)
    assert not out.exists()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_kill_during_write_leaves_only_a_temporary_that_the_next_run_removes(inputs, tmp_path, monkeypatch):
    model_dir, corpus_path, _ = inputs
    from rsdyn import store

    out = tmp_path / "activations.zarr"
    real_write_node = store._write_node
    calls = {"n": 0}

    def dies_midway(group, name, value, chunks):
        calls["n"] += 1
        if calls["n"] == 2:
            raise SystemExit(143)  # what SIGTERM becomes under raise_on_sigterm
        return real_write_node(group, name, value, chunks)

    monkeypatch.setattr(store, "_write_node", dies_midway)
    with pytest.raises(SystemExit):
        capture.capture_store(str(model_dir), str(corpus_path), str(out), CAPTURE, MODEL)
    assert not out.exists() and list(tmp_path.glob(".tmp-*")) == []
    monkeypatch.setattr(store, "_write_node", real_write_node)
    capture.capture_store(str(model_dir), str(corpus_path), str(out), CAPTURE, MODEL)
    assert zarr.open_group(str(out), mode="r")["original"].shape[1] == 6


def test_reading_a_snakemake_directory_output_does_not_warn(tmp_path):
    """Snakemake puts `.snakemake_timestamp` inside directory() outputs; reading the store
    must neither warn about it nor return it."""
    import warnings

    from rsdyn.store import write_group

    store = tmp_path / "out.zarr"
    write_group(store, {"values": np.arange(6.0).reshape(2, 3)}, attrs={})
    (store / ".snakemake_timestamp").touch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        arrays = read_group(store)
    assert list(arrays) == ["values"]
    np.testing.assert_array_equal(arrays["values"], np.arange(6.0).reshape(2, 3))
