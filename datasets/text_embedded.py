"""``sentiment_embedded``: the embedded text stand-in, generated sentiment sentences whose label needs word
order, so text runs and tests need no download [ours].

Grammar (fixed seed 0; 2400 train / 600 test sentences, disjoint)::

    clause   = SUBJECT "is" [NEGATOR] [INTENSIFIER] ADJECTIVE
               polarity = polarity(ADJECTIVE), flipped by "not" / "never"; "very", "really", ... keep it
    sentence = clause                          label = polarity(clause)
             | clause "and" clause             both clauses agree; label = their polarity
             | clause_1 "but" clause_2         opposite polarities; label = polarity(clause_2)
             | clause_1 "although" clause_2    opposite polarities; label = polarity(clause_1)

In a contrast sentence both a positive and a negative clause occur, and which one decides depends on the
connective and on the clause order; a negator flips the adjective that follows it, not the other one.  So a
bag of words cannot read the label: a logistic regression on word counts reaches 51.8 % test accuracy (chance),
one on word 1-3-grams 90.2 % (tests/test_text.py measures both).  Labels are balanced (0 negative, 1 positive).
The tokenizer is a word-level vocabulary trained on the training sentences (datasets/text.py).
"""
from __future__ import annotations

import numpy as np

from .text import MAX_LENGTH, TokenizedText, train_word_level

SUBJECTS = ("the movie", "this film", "the plot", "the acting", "the story", "the script", "the ending",
            "the soundtrack", "the cast", "the director")
POSITIVE = ("good", "great", "brilliant", "charming", "moving", "funny", "clever", "beautiful", "gripping", "fresh")
NEGATIVE = ("bad", "dull", "boring", "awful", "clumsy", "tedious", "weak", "messy", "bland", "predictable")
NEGATORS = ("not", "never")
INTENSIFIERS = ("very", "really", "truly", "quite")
FORMS = ("single", "and", "but", "although")
FORM_P = (0.25, 0.15, 0.3, 0.3)
NUM_TRAIN, NUM_TEST = 2400, 600


def _clause(rng: np.random.Generator, polarity: int) -> str:
    """A clause with the given polarity (1 positive, 0 negative)."""
    negated = rng.random() < 0.4
    adjectives = POSITIVE if polarity != negated else NEGATIVE
    words = [SUBJECTS[rng.integers(len(SUBJECTS))], "is"]
    if negated:
        words.append(NEGATORS[rng.integers(len(NEGATORS))])
    if rng.random() < 0.3:
        words.append(INTENSIFIERS[rng.integers(len(INTENSIFIERS))])
    words.append(adjectives[rng.integers(len(adjectives))])
    return " ".join(words)


def generate(count: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """``count`` distinct sentences and labels of the grammar above (deterministic in ``seed``)."""
    rng = np.random.default_rng(seed)
    sentences: dict[str, int] = {}
    while len(sentences) < count:
        label = int(rng.integers(2))
        form = FORMS[rng.choice(len(FORMS), p=FORM_P)]
        if form == "single":
            text = _clause(rng, label)
        elif form == "and":
            text = f"{_clause(rng, label)} and {_clause(rng, label)}"
        elif form == "but":
            text = f"{_clause(rng, 1 - label)} but {_clause(rng, label)}"
        else:
            text = f"{_clause(rng, label)} although {_clause(rng, 1 - label)}"
        sentences.setdefault(text, label)
    return list(sentences), list(sentences.values())


class SentimentEmbedded(TokenizedText):
    """The embedded text stand-in (module docstring); ``root`` and ``download`` are accepted for a uniform
    call and unused.  ``vocab_size`` bounds the trained vocabulary (the grammar has 42 words)."""

    def __init__(self, split: str = "train", root: str | None = None, download: bool = False,
                 max_length: int = MAX_LENGTH, vocab_size: int = 200):
        if split not in ("train", "test"):
            raise ValueError(f"sentiment_embedded has splits 'train' and 'test', got {split!r}")
        texts, labels = generate(NUM_TRAIN + NUM_TEST)
        train = slice(0, NUM_TRAIN)
        part = train if split == "train" else slice(NUM_TRAIN, None)
        super().__init__(texts[part], labels[part], 2, train_word_level(texts[train], vocab_size), max_length)
