"""Shared fixtures: tiny random models, a character tokenizer, and a temp copy of the
workflow in which snakemake runs the smoke config with the real SmolLM2 weights."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
WIKITEXT = SHARED / "data" / "wikitext-2-raw" / "wiki.test.raw"


#: every figure marks its judged claims with their verdicts (summary.json), so a job that
#: reruns the summary reruns the five figures too (seconds each)
FIGURES = {"fig1", "fig2", "fig3", "fig4", "fig5"}

def tiny_llama(n_layers: int = 3, hidden: int = 32, seed: int = 0):
    """A randomly initialised Llama causal LM (fp32, eval mode)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=128, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=n_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    return LlamaForCausalLM(config).eval()


def tiny_gemma3(n_layers: int = 3, hidden: int = 32, seed: int = 0):
    """A randomly initialised Gemma 3 text causal LM (fp32, eval mode), sliding + full layers."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=128, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=n_layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
        sliding_window=4, bos_token_id=2, eos_token_id=1, pad_token_id=0,
    )
    model = Gemma3ForCausalLM(config).eval()
    # Random norms so that the pre-MLP site is distinguishable from neighbouring tensors.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(0.0, 0.5)
    return model


class CharTokenizer:
    """A minimal tokenizer: one id per character (mod 100, offset 3), BOS = 1."""

    bos_token_id = 1
    eos_token_id = 2
    pad_token_id = 0

    def __call__(self, texts, add_special_tokens=False):
        ids = [[3 + (ord(c) % 100) for c in text] for text in texts]
        if add_special_tokens:
            ids = [[self.bos_token_id, *row] for row in ids]
        return {"input_ids": ids}


@pytest.fixture
def char_tokenizer():
    return CharTokenizer()


def copy_workflow(dest: Path) -> Path:
    """Copy the workflow (not results/, resources/) to ``dest/main`` with ``dest/shared``
    linked to the real shared folder and ``resources`` linked to the repo's (the model is
    converted once per machine). Returns the working directory."""
    work = dest / "main"
    ignore = shutil.ignore_patterns(".git", ".venv", "results", "resources", ".snakemake", "__pycache__", "*.egg-info", ".pytest_cache")
    shutil.copytree(REPO, work, ignore=ignore)
    (REPO / "resources").mkdir(exist_ok=True)
    (work / "resources").symlink_to(REPO / "resources")
    if SHARED.exists():
        (dest / "shared").symlink_to(SHARED)
    return work


def snakemake_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", *args]


def snakemake_env(workdir: Path, extra: dict | None = None) -> dict:
    """The environment for snakemake in a copied workflow: the copy's own package first on
    PYTHONPATH, so that every job runs the code that was copied."""
    pythonpath = os.pathsep.join(filter(None, [str(Path(workdir) / "src"), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": pythonpath, **(extra or {})}


def run_snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 1800, env: dict | None = None):
    """Run snakemake in ``workdir``; returns the CompletedProcess (stdout+stderr in .stdout)."""
    command = snakemake_command(*args)
    result = subprocess.run(
        command, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=timeout, env=snakemake_env(workdir, env),
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-6000:]}")
    return result


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The whole smoke DAG run locally once per session; returns its working directory."""
    work = copy_workflow(tmp_path_factory.mktemp("smoke"))
    run_snakemake(work, "--cores", "2", "--configfile", "config/smoke.yaml")
    return work
