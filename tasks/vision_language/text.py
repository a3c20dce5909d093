"""Words of questions and captions: a word vocabulary built from the training text, and its encoding to ids.

A word is a run of letters and digits (an apostrophe inside a word is kept: "what's"), lower-cased. Id 0 is
padding, id 1 an unknown word; the others are the training words by decreasing count, ties by the word.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

import torch

PAD, UNK = "[pad]", "[unk]"
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    """The words of ``text``, lower-cased."""
    return _WORD.findall(text.lower())


def build_vocabulary(texts: Iterable[str], min_count: int = 1, max_size: int | None = None) -> list[str]:
    """[PAD, UNK] then the words seen at least ``min_count`` times, most frequent first (at most ``max_size`` in
    all)."""
    counts = Counter(w for text in texts for w in words(text))
    kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    vocabulary = [PAD, UNK, *kept]
    return vocabulary if max_size is None else vocabulary[: max(2, max_size)]


def encode(texts: list[str], vocabulary: list[str] | dict[str, int], max_len: int) -> torch.Tensor:
    """Word ids [B, max_len] (long): each text's first ``max_len`` words, unknown words as 1, padded with 0."""
    index = vocabulary if isinstance(vocabulary, dict) else {w: i for i, w in enumerate(vocabulary)}
    ids = torch.zeros(len(texts), max_len, dtype=torch.long)
    for row, text in enumerate(texts):
        ws = words(text)[:max_len]
        if ws:
            ids[row, : len(ws)] = torch.tensor([index.get(w, 1) for w in ws])
    return ids


def longest(texts: Iterable[str]) -> int:
    """The most words in one of ``texts`` (at least 1)."""
    return max([len(words(t)) for t in texts] + [1])
