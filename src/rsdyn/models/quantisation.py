"""GGUF weights: what a GGUF file says of itself (its provenance), and one more dose of its
quantisation noise (``model.requantise``).

Why the blocks are regrouped. A GGUF's block quantisers (Q4_1, Q8_0, ...) round each block
of 32 consecutive weights of a row onto a grid set by the block's own range. Dequantised
weights lie exactly on that grid, so quantising them again with the same blocks finds the
same range and the same grid and gives them back unchanged (a change of exactly 0 on
SmolLM2's Q4_1 weights): re-quantising alone adds no noise. One more dose therefore
regroups the columns of every quantised tensor with a seeded permutation before
quantising (so each new block gathers weights from 32 different old blocks, whose grid it
does not share), quantises with the file's own type through the ``gguf`` package,
dequantises, and puts the columns back. Its noise is that of quantising fresh weights of
the same spread: on Gaussian weights in rows of 576 the RMS relative change of the extra
dose is 1.00 times the first dose's for Q4_1 (about 8 %) and 0.98 times for Q8_0. Rows of
few blocks get somewhat less (0.95 for Q8_0 at 8 blocks a row, 0.8 at 2): a new block
that takes its range from one old block leaves that block's weights where they were."""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

#: GGML types that store floats or integers, not quantised blocks: never re-quantised
UNQUANTISED = ("F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64")
#: the block types a re-quantisation may fall back to when the gguf package cannot
#: quantise the file's own type (K- and I-quants), in order of preference on a tie
FALLBACK_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
METHOD = (
    "columns of each quantised tensor permuted (seeded), quantised with the GGUF's own ggml type by the gguf "
    "package, dequantised, permuted back"
)


class RequantisationError(ValueError):
    """The model's weights cannot be matched to its GGUF's quantised tensors."""


def gguf_version() -> str:
    """The installed ``gguf`` package's version."""
    return metadata.version("gguf")


def _plain(value: Any) -> Any:
    """A GGUF field value as JSON (bytes as text, numpy scalars as numbers)."""
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


def tensor_role(name: str) -> str:
    """A GGUF tensor's name without its block number (``blk.3.attn_q.weight`` -> ``attn_q.weight``)."""
    parts = name.split(".")
    return ".".join(parts[2:]) if len(parts) > 2 and parts[0] == "blk" and parts[1].isdigit() else name


def tensor_type_summary(tensors: list[tuple[str, str, int]]) -> dict[str, Any]:
    """Per ggml type its tensor and element counts, and per tensor role (the name without
    its block number) the types its tensors have, from ``(name, type, elements)`` rows."""
    by_type: dict[str, dict[str, int]] = {}
    by_role: dict[str, Counter] = {}
    for name, qtype, elements in tensors:
        entry = by_type.setdefault(qtype, {"tensors": 0, "elements": 0})
        entry["tensors"] += 1
        entry["elements"] += int(elements)
        by_role.setdefault(tensor_role(name), Counter())[qtype] += 1
    return {
        "tensor_types": dict(sorted(by_type.items())),
        "tensor_types_by_role": {role: dict(sorted(counts.items())) for role, counts in sorted(by_role.items())},
    }


def gguf_provenance(path: str | Path, sha256: str) -> dict[str, Any]:
    """What a GGUF file says of itself: every ``general.*`` field (name, basename,
    finetune, size label, organisation, base models, licence, file type, ...), the file
    type's name, its tensors' ggml types summarised (:func:`tensor_type_summary`), the
    file's name, size and ``sha256`` (given by the caller), and the ``gguf`` package's
    version that read it."""
    from gguf import GGUFReader, LlamaFileType

    reader = GGUFReader(str(path))
    general = {key.removeprefix("general."): _plain(field.contents()) for key, field in reader.fields.items()
               if key.startswith("general.")}
    file_type = general.get("file_type")
    if isinstance(file_type, int):
        try:
            general["file_type_name"] = LlamaFileType(file_type).name
        except ValueError:
            general["file_type_name"] = f"unknown ({file_type})"
    tensors = [(t.name, t.tensor_type.name, int(t.n_elements)) for t in reader.tensors]
    return {
        "file": Path(path).name,
        "size_bytes": Path(path).stat().st_size,
        "sha256": sha256,
        "gguf_package": gguf_version(),
        "general": dict(sorted(general.items())),
        **tensor_type_summary(tensors),
    }


def can_quantise(qtype) -> bool:
    """Whether the installed gguf package quantises ``qtype`` (tried on one zero block)."""
    from gguf import GGML_QUANT_SIZES
    from gguf.quants import quantize

    block = GGML_QUANT_SIZES[qtype][0]
    try:
        quantize(np.zeros((1, block), dtype=np.float32), qtype)
    except NotImplementedError:
        return False
    return True


def bits_per_weight(qtype) -> float:
    from gguf import GGML_QUANT_SIZES

    block, size = GGML_QUANT_SIZES[qtype]
    return 8.0 * size / block


def requantisation_type(qtype):
    """The type a tensor of ggml type ``qtype`` is re-quantised with: its own when the gguf
    package can quantise it, else the :data:`FALLBACK_TYPES` type with the nearest bits
    per weight (the first on a tie)."""
    from gguf import GGMLQuantizationType

    if can_quantise(qtype):
        return qtype
    candidates = [GGMLQuantizationType[name] for name in FALLBACK_TYPES]
    return min(candidates, key=lambda other: abs(bits_per_weight(other) - bits_per_weight(qtype)))


def requantise(values: np.ndarray, qtype, permutation: np.ndarray) -> np.ndarray:
    """One more dose of ``qtype``'s quantisation noise on float32 ``values`` (..., n):
    the last axis taken in the order ``permutation``, quantised and dequantised by the
    gguf package (blocks along the last axis, as in a GGUF row), and put back in place.
    ``n`` must be a multiple of the type's block size."""
    from gguf import GGML_QUANT_SIZES
    from gguf.quants import dequantize, quantize

    values = np.asarray(values, dtype=np.float32)
    block = GGML_QUANT_SIZES[qtype][0]
    if values.shape[-1] % block:
        raise RequantisationError(f"rows of {values.shape[-1]} weights do not split into {qtype.name} blocks of {block}.")
    regrouped = np.ascontiguousarray(values[..., permutation])
    restored = dequantize(quantize(regrouped, qtype), qtype).reshape(regrouped.shape)
    out = np.empty_like(restored)
    out[..., permutation] = restored
    return out


def column_permutation(seed: int, tensor_name: str, n_columns: int) -> np.ndarray:
    """The seeded column order of one tensor: depends on ``seed`` and the tensor's GGUF
    name only (not on which other tensors there are)."""
    return np.random.default_rng([int(seed), zlib.crc32(tensor_name.encode())]).permutation(n_columns)


def gguf_to_model_names(model) -> dict[str, str]:
    """GGUF tensor name -> the model's parameter name, as transformers maps them when it
    loads a GGUF."""
    from transformers.modeling_gguf_pytorch_utils import (
        TensorProcessor,
        get_gguf_hf_weights_map,
    )

    try:
        return get_gguf_hf_weights_map(model, TensorProcessor())
    except NotImplementedError as err:
        raise RequantisationError(f"the GGUF's tensors cannot be matched to the model's parameters ({err}).") from None


def requantise_model(model, gguf_path: str | Path, seed: int) -> dict[str, Any]:
    """Apply one more dose of the GGUF's quantisation noise to ``model`` (loaded from
    ``gguf_path`` and dequantised by transformers) in place: every tensor stored quantised
    in the file is re-quantised with its own type (or :func:`requantisation_type`'s
    nearest), its columns regrouped by :func:`column_permutation`. Returns the record:
    per file type the type used, tensors, elements and RMS relative change
    ``||W' - W|| / ||W||``, the same over all re-quantised weights, the tensors left
    alone per type, the seed, method and gguf version."""
    import torch
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))
    names = gguf_to_model_names(model)
    per_type: dict[str, dict[str, Any]] = {}
    sums: dict[str, list[float]] = {}
    untouched: Counter = Counter()
    for tensor in reader.tensors:
        qtype = tensor.tensor_type
        if qtype.name in UNQUANTISED:
            untouched[qtype.name] += 1
            continue
        parameter = _parameter(model, names, tensor)
        used = requantisation_type(qtype)
        values = parameter.detach().to("cpu", torch.float32).numpy().copy()  # not a view of the parameter
        changed = requantise(values, used, column_permutation(seed, tensor.name, values.shape[-1]))
        entry = per_type.setdefault(qtype.name, {"requantised_as": used.name, "tensors": 0, "elements": 0})
        entry["tensors"] += 1
        entry["elements"] += int(values.size)
        total = sums.setdefault(qtype.name, [0.0, 0.0])
        total[0] += float(np.square(changed.astype(np.float64) - values).sum())
        total[1] += float(np.square(values.astype(np.float64)).sum())
        with torch.no_grad():
            parameter.copy_(torch.from_numpy(changed).to(parameter.device, parameter.dtype))
    if not per_type:
        raise RequantisationError(f"{Path(gguf_path).name} has no quantised tensor to re-quantise.")
    for name, (change, norm) in sums.items():
        per_type[name]["rms_relative_change"] = rms_ratio(change, norm)
    overall = np.sum(list(sums.values()), axis=0)
    return {
        "seed": int(seed),
        "method": METHOD,
        "gguf_package": gguf_version(),
        "types": dict(sorted(per_type.items())),
        "rms_relative_change": rms_ratio(*overall),
        "left_alone": dict(sorted(untouched.items())),
    }


def rms_ratio(change: float, norm: float) -> float:
    """sqrt(change / norm), 0 for a zero norm."""
    return float(np.sqrt(change / norm)) if norm > 0 else 0.0


def _parameter(model, names: Mapping[str, str], tensor):
    """The model parameter holding GGUF ``tensor``; RequantisationError when there is none
    or its shape does not match (rows of the GGUF = the parameter's last axis)."""
    name = names.get(tensor.name)
    if name is None:
        raise RequantisationError(f"the GGUF tensor {tensor.name} ({tensor.tensor_type.name}) has no parameter in the model.")
    parameter = model.get_parameter(name)
    if parameter.numel() != int(tensor.n_elements) or parameter.shape[-1] != int(tensor.shape[0]):
        raise RequantisationError(
            f"the GGUF tensor {tensor.name} {tuple(int(s) for s in tensor.shape)} does not match the model's {name} "
            f"{tuple(parameter.shape)}."
        )
    return parameter
