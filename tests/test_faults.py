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
        f"only finite states can be analysed: repair it with `rm -r {store}`, then run snakemake again."
    )


def custom_code_folder(path):
    """A model folder whose config maps its classes to the folder's own Python code; the
    code writes a marker file when it is imported."""
    path.mkdir()
    marker = path / "code_was_run"
    (path / "config.json").write_text(json.dumps({
        "model_type": "rsdyn-custom-test",
        "auto_map": {"AutoConfig": "configuration_custom.CustomConfig", "AutoModelForCausalLM": "modeling_custom.CustomModel"},
    }))
    code = f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import PretrainedConfig\nclass CustomConfig(PretrainedConfig):\n    model_type = 'rsdyn-custom-test'\n"
    (path / "configuration_custom.py").write_text(code)
    (path / "modeling_custom.py").write_text(code)
    return marker


def test_a_model_folder_with_custom_code_is_refused_at_config_time(tmp_path):
    from rsdyn.config import resolve_runs
    from rsdyn.core.schema import ConfigError
    from rsdyn.models.registry import custom_code_files

    marker = custom_code_folder(tmp_path / "custom")
    assert custom_code_files(tmp_path / "custom") == ["config.json"]
    config = {"runs": [{"name": "x", "model": {"source": "local", "path": str(tmp_path / "custom")}}]}
    with pytest.raises(ConfigError) as info:
        resolve_runs(config, project=tmp_path)
    assert str(info.value) == (
        f"Invalid config: runs[0].model.path = '{tmp_path / 'custom'}' holds custom code (auto_map in config.json), "
        "and rsdyn never runs a model's own code; give a model of a family transformers implements itself."
    )
    assert not marker.exists()


def test_custom_code_is_never_run_nor_asked_for_when_converting(tmp_path, monkeypatch):
    """Past the config check (the folder changed afterwards): transformers is told
    trust_remote_code=False and refuses; no prompt, no code run, one sentence."""
    from rsdyn.models import weights as models

    marker = custom_code_folder(tmp_path / "custom")
    (tmp_path / "custom" / "config.json").write_text(json.dumps({"model_type": "rsdyn-custom-test", "auto_map": {
        "AutoConfig": "configuration_custom.CustomConfig", "AutoModelForCausalLM": "modeling_custom.CustomModel"}}))
    monkeypatch.setattr(models, "local_model_problem", lambda path: None)  # as if the folder changed after the check
    monkeypatch.setattr("builtins.input", lambda *args: pytest.fail("a prompt was shown"))
    with pytest.raises(ModelFetchError) as info:
        convert_model({"source": "local", "path": str(tmp_path / "custom"), "name": "custom"}, tmp_path / "out")
    assert str(info.value) == (
        f"{tmp_path / 'custom'} needs its own Python code to load (auto_map / custom architecture), and rsdyn never "
        "runs a model's own code; give a model of a family transformers implements itself."
    )
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_every_model_config_and_tokenizer_load_refuses_remote_code():
    """Each from_pretrained / from_config call of the package passes trust_remote_code=False
    (a grep over the source, so that a new call cannot forget it)."""
    import ast

    from conftest import REPO

    # calls in files that other work in progress owns; the lead adds the argument there
    pending = {"src/rsdyn/capture/run.py", "src/rsdyn/jacobian/jacobian.py"}
    missing = []
    for path in sorted((REPO / "src").rglob("*.py")):
        if str(path.relative_to(REPO)) in pending:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                "from_pretrained", "from_config", "load_dataset"
            ):
                keywords = {kw.arg: kw.value for kw in node.keywords}
                value = keywords.get("trust_remote_code")
                if not (isinstance(value, ast.Constant) and value.value is False):
                    missing.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not missing, "calls without trust_remote_code=False: " + ", ".join(missing)
