"""The last-word control (``corpus.strip_trailing_punctuation``): every sequence loses its
trailing punctuation tokens, so the capture's last token is the sequence's last word; the
stored states are the full sequence's residual stream at that word (a causal model), the
shuffled condition permutes the stripped tokens, and every reader of the ids
(``distinct_states``, the cluster bootstrap by last token) sees the word."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
import zarr
from conftest import REPO, tiny_llama
from test_capture import reference_states
from test_capture_store import CAPTURE

from rsdyn.capture import run as capture_run
from rsdyn.capture.corpus import (
    CorpusError,
    build_corpus,
    is_punctuation,
    save_corpus,
    strip_trailing_punctuation,
    tokenize,
)
from rsdyn.config import resolve_runs
from rsdyn.units.claims import last_tokens
from rsdyn.units.layer_stats import layer_stats

WORDS = ["the", "cat", "sat", "on", "mat", "dog", "ran", "in", "1990", "big", "red", "it", "was"]
MARKS = [".", ",", "!", ")", "(", '"', '."', ".)", "...", "?", "$"]
#: (text, its last word); "$" is a symbol, not punctuation, so it stays
TEXTS = [
    ("the cat sat on the mat .", "mat"),
    ("the dog ran in 1990 .", "1990"),
    ("it was big .", "big"),
    ("the red cat ran ( in 1990 ) .", "1990"),
    ("the mat was red .", "red"),
    ('the dog sat , it ran ."', "ran"),
    ("big red $", "$"),
    ("the cat was on the mat", "mat"),
]
MODEL = {"source": "local", "name": "tiny", "path": "unused", "family": "auto"}


def word_tokenizer():
    """A word-level tokenizer that splits punctuation from words (runs of marks are one
    token, as '."'), BOS <s> = 1."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tk_models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{token: 3 + i for i, token in enumerate(WORDS + MARKS)}}
    backend = Tokenizer(tk_models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def corpus_settings(path, **overrides) -> dict:
    base = {"local_candidates": {"test": [str(path)]}, "hf_dataset": "unused", "hf_config": "unused", "split": "test",
            "min_chars": 0, "max_chars": 1000, "n_samples": None, "seed": 0}
    return {**base, **overrides}


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "wiki.raw"
    path.write_text("".join(f" {text} \n" for text, _ in TEXTS), encoding="utf-8")
    return path


@pytest.mark.parametrize("text,expected", [
    (".", True), (" .", True), ('."', True), (" )", True), ("...", True), ("", True), (" ", True), ("«", True),
    ("mat", False), (" 1990", False), ("$", False), ("a.", False), ("\ufffd", False),
])
def test_punctuation_is_unicode_punctuation_and_whitespace_only(text, expected):
    assert is_punctuation(text) is expected


def test_trailing_punctuation_tokens_go_and_the_rest_is_the_same_prefix():
    tokenizer = word_tokenizer()
    sequences = tokenize([text for text, _ in TEXTS], tokenizer)
    stripped = strip_trailing_punctuation(sequences, tokenizer)
    for full, short, (_, word) in zip(sequences, stripped, TEXTS):
        assert short[0] == tokenizer.bos_token_id
        assert np.array_equal(full[: len(short)], short)
        assert tokenizer.decode([int(short[-1])]) == word
        assert all(is_punctuation(tokenizer.decode([int(token)])) for token in full[len(short):])
    assert [len(f) - len(s) for f, s in zip(sequences, stripped)] == [1, 1, 1, 2, 1, 1, 0, 0]


def test_a_sequence_without_a_word_is_refused_by_name():
    tokenizer = word_tokenizer()
    sequences = tokenize(["the cat .", '. ."'], tokenizer)
    with pytest.raises(CorpusError, match=r"sequence 1 \('\. \.\"'\) has no token that is not punctuation"):
        strip_trailing_punctuation(sequences, tokenizer, ["the cat .", '. ."'])


@pytest.mark.parametrize("keep_last", [False, True])
def test_the_shuffled_condition_permutes_the_stripped_tokens(text_file, keep_last):
    tokenizer = word_tokenizer()
    whole = build_corpus(corpus_settings(text_file), tokenizer)
    corpus = build_corpus(corpus_settings(text_file, strip_trailing_punctuation=True, shuffle_keep_last=keep_last), tokenizer)
    assert corpus.texts == whole.texts == [text for text, _ in TEXTS]  # the texts stay whole
    assert (whole.lengths - corpus.lengths).tolist() == [1, 1, 1, 2, 1, 1, 0, 0]
    for original, shuffled, n, (_, word) in zip(corpus.original_ids, corpus.shuffled_ids, corpus.lengths, TEXTS):
        assert np.all(original[n:] == -1) and np.all(shuffled[n:] == -1)
        assert shuffled[0] == original[0] == tokenizer.bos_token_id
        assert sorted(shuffled[:n]) == sorted(original[:n])  # the same tokens: no punctuation was moved in
        assert tokenizer.decode([int(original[n - 1])]) == word
        if keep_last:
            assert shuffled[n - 1] == original[n - 1]


@pytest.fixture
def captured(tmp_path, text_file):
    """activations.zarr of the tiny model over the corpus, without and with the stripping."""
    tokenizer = word_tokenizer()
    model_dir = tmp_path / "model"
    model = tiny_llama(n_layers=3, hidden=32)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    stores = {}
    for label, strip in [("whole", False), ("last_word", True)]:
        settings = corpus_settings(text_file, strip_trailing_punctuation=strip)
        corpus_path = tmp_path / f"{label}.npz"
        save_corpus(build_corpus(settings, tokenizer), corpus_path)
        stores[label] = tmp_path / f"{label}.zarr"
        capture_run.capture_store(str(model_dir), str(corpus_path), str(stores[label]), CAPTURE, MODEL, settings)
    return model, tokenizer, stores


def test_the_captured_rows_are_the_full_sequences_read_at_their_last_word(captured):
    """Each stored row equals one unbatched forward of the WHOLE sequence (punctuation
    included) read at the position of its last word (float32; batching and padding move
    values by ~1e-7 of their size, so 1e-5 absolute on states of size ~1)."""
    model, tokenizer, stores = captured
    group = zarr.open_group(str(stores["last_word"]), mode="r")
    states = group["original"][...]
    full = tokenize([text for text, _ in TEXTS], tokenizer)
    for row, (sequence, (_, word)) in enumerate(zip(full, TEXTS)):
        position = max(index for index, token in enumerate(sequence) if tokenizer.decode([int(token)]) == word)
        pre_attn, pre_mlp = reference_states(model, sequence, "self_attn", position)
        np.testing.assert_allclose(states[row, 0::2], pre_attn, rtol=0, atol=1e-5)
        np.testing.assert_allclose(states[row, 1::2], pre_mlp, rtol=0, atol=1e-5)
    assert dict(group.attrs)["config"]["corpus"]["strip_trailing_punctuation"] is True


def test_distinct_states_and_last_token_clusters_count_the_last_words(captured):
    _, tokenizer, stores = captured
    words = {word for _, word in TEXTS}
    for label, expected in [("whole", {".", '."', "$", "mat"}), ("last_word", words)]:
        group = zarr.open_group(str(stores[label]), mode="r")
        ids = last_tokens(group["original_ids"][...])
        assert {tokenizer.decode([int(token)]) for token in ids} == expected
        table = layer_stats(stores[label], 0.2)
        first = table[(table["condition"] == "original") & (table["kind"] == "sublayer") & (table["index"] == 0)]
        assert int(first["distinct_states"].iloc[0]) == len(expected)


def test_the_option_is_left_out_of_the_resolved_settings_while_it_is_off():
    """Runs resolved before the option existed keep their settings (no rerun); on, it is
    kept, in the run's corpus and in the CAE's own corpus merged over it."""
    for name in ("config.yaml", "smoke.yaml", "paper.yaml"):
        for settings in resolve_runs(yaml.safe_load((REPO / "config" / name).read_text())).values():
            assert "strip_trailing_punctuation" not in settings["corpus"]
            assert "strip_trailing_punctuation" not in (settings["cae"].get("corpus") or {})
    config = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    config.setdefault("corpus", {})["strip_trailing_punctuation"] = True
    settings = next(iter(resolve_runs(config).values()))
    assert settings["corpus"]["strip_trailing_punctuation"] is True
    assert settings["cae"]["corpus"]["strip_trailing_punctuation"] is True
