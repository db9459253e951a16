"""Faults only a job can see: each fails with one sentence that names the file and the cause."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import tiny_llama

from rsdyn.cae.run import run_cae
from rsdyn.capture.corpus import CorpusError, read_lines
from rsdyn.core.store import StoreError, write_group
from rsdyn.models.weights import (
    ModelFetchError,
    convert_model,
    hub_failure,
    resolve_hub_commit,
)

CAE_SETTINGS = {"n_layers": 2, "lr": 1e-3, "max_epochs": 1, "patience": 1, "batch_size": 8,
                "val_fraction": 0.25, "test_fraction": 0.25, "device": "cpu", "seed": 0}


def test_a_corpus_that_is_not_utf8_names_the_file_and_the_byte(tmp_path):
    path = tmp_path / "wiki.test.raw"
    good = " = Title = \n some text \n".encode()
    path.write_bytes(good + b"caf\xe9\n")
    with pytest.raises(CorpusError) as info:
        read_lines(path)
    assert str(info.value) == (
        f"The corpus file {path} is not UTF-8 text (byte {len(good) + 3}: invalid continuation byte); "
        "corpus.local_candidates must name WikiText raw text files."
    )


def test_a_local_folder_that_is_not_a_model_is_named(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "tokenizer.model").write_bytes(b"not a model")
    with pytest.raises(ModelFetchError) as info:
        convert_model({"source": "local", "path": str(tmp_path / "folder"), "name": "x"}, tmp_path / "out")
    assert str(info.value) == (
        f"model.path '{tmp_path / 'folder'}' is not a transformers model folder: it has no config.json "
        "(a model folder holds config.json, the weights and the tokenizer files)."
    )
    assert not (tmp_path / "out").exists()


def test_an_unreachable_hub_is_one_sentence():
    """This machine reaches no hub: the real client fails, the message says what to do."""
    with pytest.raises(ModelFetchError) as info:
        resolve_hub_commit("meta-llama/Llama-3.1-8B-not-cached", "main")
    message = str(info.value)
    assert message.startswith("Cannot reach the hub for meta-llama/Llama-3.1-8B-not-cached (")
    assert message.endswith("); log in with `hf auth login` or use a local copy (model.source: local).")
    assert "\n" not in message


def test_a_gated_model_is_one_sentence():
    from huggingface_hub import errors

    gated = errors.GatedRepoError.__new__(errors.GatedRepoError)
    assert hub_failure("meta-llama/Llama-3.1-8B", gated) == (
        "meta-llama/Llama-3.1-8B is a gated model on the hub: accept its licence on the model page, "
        "then log in with `hf auth login` or use a local copy (model.source: local)."
    )


def test_the_converted_models_provenance_records_the_resolved_hub_commit(monkeypatch, tmp_path):
    """A hub model's provenance holds the commit its revision pointed to, to pin later."""
    from rsdyn.models import weights as models

    source = tmp_path / "hub-copy"
    tiny_llama().save_pretrained(source)
    from tokenizers import Tokenizer
    from tokenizers import models as tokenizer_models
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(tokenizer_models.WordLevel({"<s>": 1, "a": 3}, unk_token="<s>")),
                            bos_token="<s>").save_pretrained(source)
    commit = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setattr(models, "resolve_hub_commit", lambda model_id, revision: commit)
    requested = {}  # the revision each loader was asked for

    import transformers

    for auto in (transformers.AutoTokenizer, transformers.AutoModelForCausalLM):
        original = auto.from_pretrained.__func__

        def load(cls, location, *args, _original=original, **kwargs):
            requested[cls.__name__] = kwargs.get("revision")
            return _original(cls, str(source), *args)

        monkeypatch.setattr(auto, "from_pretrained", classmethod(load))
    out = convert_model({"source": "hf", "id": "someone/tiny", "revision": "main", "name": "tiny"}, tmp_path / "out")
    provenance = json.loads((out / "rsdyn_model.json").read_text())
    assert provenance["revision"] == "main" and provenance["resolved_revision"] == commit
    assert set(requested.values()) == {commit}


def test_nan_reaching_the_cae_names_the_store_array_and_chunk(tmp_path):
    store = tmp_path / "activations.zarr"
    states = np.random.default_rng(0).standard_normal((8, 4, 16)).astype(np.float32)
    states[5, 2, 9] = np.nan
    write_group(store, {"original": states}, chunks={"original": (8, 4, 8)})
    with pytest.raises(StoreError) as info:
        run_cae(store, tmp_path / "cae", CAE_SETTINGS)
    assert str(info.value) == (
        f"{store}: array 'original' holds 1 NaN or infinite values (the first at index (5, 2, 9), chunk c/0/0/1); "
        f"only finite states can be analysed: delete {store} and run snakemake again to rebuild it."
    )
