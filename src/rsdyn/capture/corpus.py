"""Corpus stage: WikiText-2 raw (the configured split, from a local file listed for that
split or from the hub), length filter, seeded subsample, BOS tokenisation, optionally
the trailing punctuation tokens removed (so that every sequence ends with its last word),
and the shuffled condition (positions 1..n permuted, BOS kept first; optionally the last
token kept too).

The output (one ``.npz``) holds the texts and the token ids of both conditions, so that
every later rule reads exactly the same tokens.
"""

from __future__ import annotations

import logging
import unicodedata
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rsdyn.capture.settings import filter_lengths, text_lines
from rsdyn.core.store import atomic_path

log = logging.getLogger(__name__)

PAD_ID = -1  # right padding of the stored id matrices


class CorpusError(ValueError):
    """The corpus cannot provide what the config asks for."""


@dataclass
class Corpus:
    """Texts and token ids of both conditions; ids right-padded with ``PAD_ID``."""

    texts: list[str]
    original_ids: np.ndarray  # int32 (N, max_len)
    shuffled_ids: np.ndarray  # int32 (N, max_len)
    lengths: np.ndarray  # int32 (N,), tokens including BOS
    source: str

    def rows(self, condition: str) -> list[np.ndarray]:
        """The unpadded id sequences of ``condition`` (``original`` or ``shuffled``)."""
        ids = self.original_ids if condition == "original" else self.shuffled_ids
        return [row[:n] for row, n in zip(ids, self.lengths)]


def read_lines(path: str | Path) -> list[str]:
    """Non-empty lines of a WikiText raw file, without their newline; CorpusError when the
    file is not UTF-8 text."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CorpusError(
            f"The corpus file {path} is not UTF-8 text (byte {err.start}: {err.reason}); "
            "corpus.local_candidates must name WikiText raw text files."
        ) from None
    return text_lines(text)


def split_candidates(local_candidates: Mapping[str, Sequence[str]], split: str) -> list[str]:
    """The local files that may hold ``split`` (``corpus.local_candidates[split]``), in order.

    A file listed under one split is never read for another.
    """
    if not isinstance(local_candidates, Mapping):
        raise CorpusError(
            "corpus.local_candidates must map each split (train, validation, test) to its list of "
            f"local files; got a {type(local_candidates).__name__}."
        )
    return [str(candidate) for candidate in local_candidates.get(split, ())]


def local_corpus_file(local_candidates: Mapping[str, Sequence[str]], split: str) -> str | None:
    """The first existing local file of ``split``, or None (then the corpus comes from the hub)."""
    for candidate in split_candidates(local_candidates, split):
        if Path(candidate).is_file():
            return candidate
    return None


def load_wikitext(
    local_candidates: Mapping[str, Sequence[str]], hf_dataset: str, hf_config: str, split: str
) -> tuple[list[str], str]:
    """Lines of the WikiText ``split``: from its first existing local file, else from the hub.

    Returns ``(lines, source description)``. Raises :class:`CorpusError` when no local
    file of the split exists and the hub dataset cannot be loaded.
    """
    local = local_corpus_file(local_candidates, split)
    if local is not None:
        return read_lines(local), f"{local} ({split} split)"
    candidates = split_candidates(local_candidates, split)
    log.info("no local file for split %r among %s; loading %s/%s:%s from the hub", split, candidates, hf_dataset, hf_config, split)
    try:
        import datasets

        rows = datasets.load_dataset(hf_dataset, hf_config, split=split, trust_remote_code=False)["text"]
    except Exception as err:  # no datasets package, no network, unknown dataset or split
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no message'}"
        raise CorpusError(
            f"corpus.split = {split!r} is neither in a local file (corpus.local_candidates.{split}: "
            f"{candidates or 'none listed'}, none exists) nor loadable from the hub as "
            f"{hf_dataset}/{hf_config}:{split} ({reason})."
        ) from err
    lines = [text.rstrip("\n") for text in rows if text.strip()]
    return lines, f"{hf_dataset}/{hf_config}:{split}"


def subsample(texts: Sequence[str], n_samples: int | None, seed: int, source: str = "the corpus") -> list[str]:
    """A seeded subsample of ``n_samples`` texts, kept in corpus order (all if None)."""
    if n_samples is None:
        return list(texts)
    if n_samples > len(texts):
        raise CorpusError(
            f"corpus.n_samples = {n_samples} but only {len(texts)} sequences pass the length "
            f"filter in {source}; ask for at most {len(texts)} or set n_samples to null."
        )
    chosen = np.sort(np.random.default_rng(seed).choice(len(texts), size=n_samples, replace=False))
    return [texts[i] for i in chosen]


def bos_id(tokenizer) -> int:
    """The tokenizer's BOS id (its EOS id for models without one, as Qwen)."""
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    raise CorpusError("The tokenizer has neither a BOS nor an EOS token to start sequences with.")


def tokenize(texts: Sequence[str], tokenizer) -> list[np.ndarray]:
    """Token ids of each text with the BOS token first (no other special tokens)."""
    first = bos_id(tokenizer)
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [np.asarray([first, *ids], dtype=np.int64) for ids in encoded]


def model_context(tokenizer) -> int | None:
    """The longest sequence the tokenizer's model takes (``max_position_embeddings`` of the
    model folder it was loaded from), or None when that is not known."""
    from rsdyn.models.registry import context_length

    folder = getattr(tokenizer, "name_or_path", None)
    return context_length(folder) if folder and Path(folder).is_dir() else None


def check_context(sequences: Sequence[np.ndarray], tokenizer) -> None:
    """CorpusError when a tokenised sequence is longer than the model's context (the config
    refuses a corpus.max_chars that allows it whenever the context is known beforehand)."""
    context = model_context(tokenizer)
    if context is None:
        return
    lengths = np.asarray([len(sequence) for sequence in sequences])
    too_long = int((lengths > context).sum())
    if too_long:
        raise CorpusError(
            f"{too_long} sequences are longer than the {context}-token context of the model (the longest has "
            f"{int(lengths.max())} tokens, BOS included); lower corpus.max_chars so that every kept line fits."
        )


def is_punctuation(text: str) -> bool:
    """Whether a token's text is only punctuation and whitespace (Unicode categories P*
    and spaces; the empty text counts): no word, number or symbol in it."""
    return all(char.isspace() or unicodedata.category(char).startswith("P") for char in text)


def strip_trailing_punctuation(sequences: Sequence[np.ndarray], tokenizer, texts: Sequence[str] | None = None) -> list[np.ndarray]:
    """Each sequence without its trailing tokens whose text (``tokenizer.decode`` of the
    token alone) is punctuation or whitespace (:func:`is_punctuation`), so that it ends
    with its last word. BOS is never removed; CorpusError when a sequence has no other
    token left (``texts`` name it).

    In a causal model the state at a position depends only on the tokens up to it, so
    the last state of a stripped sequence is the full sequence's state at its last word."""
    stripped = []
    for row, seq in enumerate(sequences):
        stop = len(seq)
        while stop > 1 and is_punctuation(tokenizer.decode([int(seq[stop - 1])])):
            stop -= 1
        if stop == 1:
            shown = f" ({texts[row][:60]!r})" if texts is not None else ""
            raise CorpusError(
                f"corpus.strip_trailing_punctuation: sequence {row}{shown} has no token that is not punctuation or "
                "whitespace; raise corpus.min_chars or set strip_trailing_punctuation to false."
            )
        stripped.append(seq[:stop])
    return stripped


def shuffle_positions(sequences: Sequence[np.ndarray], seed: int, keep_last: bool = False) -> list[np.ndarray]:
    """Each sequence with its tokens after BOS randomly permuted (seeded), BOS kept first.

    ``keep_last=False`` (the paper's control) permutes positions 1..n of ``[t_0..t_n]``;
    ``keep_last=True`` permutes positions 1..n-1 and keeps the last token ``t_n`` in place,
    so that the shuffled sequence ends with the same token as the original.
    """
    rng = np.random.default_rng(seed)
    shuffled = []
    for seq in sequences:
        stop = max(1, len(seq) - 1) if keep_last else len(seq)
        middle = seq[1:stop][rng.permutation(max(0, stop - 1))]
        shuffled.append(np.concatenate([seq[:1], middle, seq[stop:]]))
    return shuffled


def pad(sequences: Sequence[np.ndarray], fill: int = PAD_ID) -> np.ndarray:
    """Right-pad integer sequences into an int32 matrix."""
    width = max(len(s) for s in sequences)
    out = np.full((len(sequences), width), fill, dtype=np.int32)
    for row, seq in enumerate(sequences):
        out[row, : len(seq)] = seq
    return out


def build_corpus(settings: dict, tokenizer) -> Corpus:
    """Load, filter, subsample, tokenise and shuffle as the ``corpus`` settings say.

    The length filter applies to each line as stored; with ``strip_whitespace`` the kept
    lines then lose their leading and trailing spaces (every WikiText line ends with
    " "), so that the last token is the sequence's own final word or punctuation. With
    ``strip_trailing_punctuation`` the token sequences then lose their trailing
    punctuation tokens (:func:`strip_trailing_punctuation`), so that they end with their
    last word; the texts stay whole, and the shuffled condition permutes the stripped
    tokens (the punctuation is in neither condition).
    """
    lines, source = load_wikitext(
        settings["local_candidates"], settings["hf_dataset"], settings["hf_config"], settings["split"]
    )
    kept = filter_lengths(lines, settings["min_chars"], settings["max_chars"])
    if not kept:
        raise CorpusError(
            f"The corpus is empty after filtering: 0 of {len(lines)} lines of {source} are strictly "
            f"between corpus.min_chars = {settings['min_chars']} and corpus.max_chars = "
            f"{settings['max_chars']} characters."
        )
    texts = subsample(kept, settings["n_samples"], settings["seed"], source)
    if settings.get("strip_whitespace", True):
        texts = [text.strip() for text in texts]
    log.info("%d lines in %s, %d pass the length filter, %d kept", len(lines), source, len(kept), len(texts))
    original = tokenize(texts, tokenizer)
    check_context(original, tokenizer)
    if settings.get("strip_trailing_punctuation", False):
        original = strip_trailing_punctuation(original, tokenizer, texts)
    shuffled = shuffle_positions(original, settings["seed"], settings.get("shuffle_keep_last", False))
    return Corpus(
        texts=texts,
        original_ids=pad(original),
        shuffled_ids=pad(shuffled),
        lengths=np.asarray([len(s) for s in original], dtype=np.int32),
        source=source,
    )


def save_corpus(corpus: Corpus, path: str | Path) -> None:
    """Write the corpus atomically as one ``.npz`` (no pickled objects)."""
    with atomic_path(path) as temp:
        with open(temp, "wb") as handle:
            np.savez(
                handle,
                texts=np.asarray(corpus.texts, dtype=np.str_),
                original_ids=corpus.original_ids,
                shuffled_ids=corpus.shuffled_ids,
                lengths=corpus.lengths,
                source=np.asarray(corpus.source, dtype=np.str_),
            )


def load_corpus(path: str | Path) -> Corpus:
    """Read a corpus written by :func:`save_corpus`, checked against the checksum written
    with it; CorpusError naming the file and the repair when it is damaged."""
    from rsdyn.core.manifest import check_output, repair_advice

    check_output(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            return Corpus(
                texts=[str(t) for t in data["texts"]],
                original_ids=data["original_ids"],
                shuffled_ids=data["shuffled_ids"],
                lengths=data["lengths"],
                source=str(data["source"]),
            )
    except (zipfile.BadZipFile, ValueError, KeyError, EOFError, OSError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise CorpusError(
            f"{path} is damaged and cannot be read ({type(err).__name__}: {err}); {repair_advice([path])}."
        ) from None
