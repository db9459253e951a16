"""Corpus stage: length filter, BOS, shuffled condition, subsampling, errors."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import WIKITEXT
from rsdyn.corpus import (
    CorpusError, build_corpus, filter_lengths, load_corpus, read_lines, save_corpus, shuffle_positions, subsample,
)


def settings(path, **overrides):
    base = {"local_candidates": [str(path)], "hf_dataset": "unused", "hf_config": "unused", "split": "test",
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
