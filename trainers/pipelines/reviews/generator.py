"""A seeded generator of movie reviews that is learnable but not trivial.

A review is a few opinion clauses about aspects of a film, with intensifiers, negations ("not
bad" leans positive), contrasts (the clause after "but" weighs more), filler sentences, typos and
a few flipped labels. ``shift`` in [0, 1] moves it to other topics (series and games, with their
own vocabulary) and longer texts.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

ASPECTS = [
    "acting",
    "plot",
    "script",
    "soundtrack",
    "cinematography",
    "pacing",
    "ending",
    "dialogue",
    "characters",
    "visuals",
    "direction",
    "cast",
    "story",
    "score",
    "editing",
]
SHIFTED_ASPECTS = [
    "gameplay",
    "graphics",
    "controls",
    "episodes",
    "season",
    "multiplayer",
    "storyline",
    "levels",
    "finale",
    "voice work",
    "netcode",
    "campaign",
    "boss fights",
    "writers room",
]
POSITIVE = [
    "great",
    "wonderful",
    "brilliant",
    "superb",
    "moving",
    "gripping",
    "delightful",
    "excellent",
    "beautiful",
    "clever",
    "charming",
    "fantastic",
    "memorable",
    "stunning",
    "good",
    "solid",
]
NEGATIVE = [
    "dull",
    "boring",
    "awful",
    "terrible",
    "weak",
    "predictable",
    "clumsy",
    "bland",
    "forgettable",
    "messy",
    "tedious",
    "painful",
    "lifeless",
    "shallow",
    "bad",
    "poor",
]
SHIFTED_POSITIVE = ["addictive", "polished", "immersive", "rewarding", "bingeworthy", "slick"]
SHIFTED_NEGATIVE = ["janky", "buggy", "grindy", "laggy", "padded", "unplayable"]
INTENSIFIERS = {
    "very": 1.5,
    "really": 1.4,
    "truly": 1.5,
    "incredibly": 1.8,
    "somewhat": 0.6,
    "rather": 0.8,
    "quite": 1.1,
    "": 1.0,
}
NEGATIONS = ["not", "never", "hardly", "far from"]
FILLER = [
    "i watched it on a friday night.",
    "my friend recommended it to me.",
    "it runs a little over two hours.",
    "saw it in the cinema with my family.",
    "the trailer gave away a lot.",
    "i went in knowing nothing about it.",
    "it was raining so we stayed in.",
    "this is the director's third feature.",
]
SHIFTED_FILLER = [
    "i played it over the long weekend.",
    "we binged the whole season in two nights.",
    "the patch notes were longer than the manual.",
    "my clan mates talked me into it.",
    "the download took most of the evening.",
    "i streamed it for a few friends.",
]
TEMPLATES = [
    "the {aspect} was {neg}{adv}{adj}",
    "i found the {aspect} {neg}{adv}{adj}",
    "{aspect}: {neg}{adv}{adj}",
    "honestly the {aspect} is {neg}{adv}{adj}",
    "the {aspect} felt {neg}{adv}{adj}",
]
TITLES_POS = ["loved it", "a must see", "great fun", "worth it", "brilliant"]
TITLES_NEG = ["skip it", "disappointing", "what a waste", "meh", "not for me"]


def _typo(word: str, rng: np.random.Generator) -> str:
    if len(word) < 4:
        return word
    i = int(rng.integers(1, len(word) - 2))
    return word[:i] + word[i + 1] + word[i] + word[i + 2 :]


def _review(rng: np.random.Generator, s: float) -> tuple[str, str | None, str]:
    shifted = rng.random() < s
    aspects = SHIFTED_ASPECTS if shifted else ASPECTS
    pos = POSITIVE[:8] + SHIFTED_POSITIVE if shifted else POSITIVE
    neg = NEGATIVE[:8] + SHIFTED_NEGATIVE if shifted else NEGATIVE
    n_clauses = int(rng.integers(1, 4 + round(3 * s)))
    score, clauses = 0.0, []
    for k in range(n_clauses):
        polarity = 1 if rng.random() < 0.5 else -1
        adj = str(rng.choice(pos if polarity > 0 else neg))
        adv = str(rng.choice(list(INTENSIFIERS)))
        negated = rng.random() < 0.18
        weight = INTENSIFIERS[adv] * (-0.5 if negated else 1.0)
        contrast = k > 0 and rng.random() < 0.4
        weight *= 1.6 if contrast else 1.0
        score += polarity * weight
        clause = str(rng.choice(TEMPLATES)).format(
            aspect=rng.choice(aspects),
            neg=(str(rng.choice(NEGATIONS)) + " ") if negated else "",
            adv=(adv + " ") if adv else "",
            adj=adj,
        )
        clauses.append(("but " if contrast else "and " if k else "") + clause)
    fillers = SHIFTED_FILLER if shifted else FILLER
    sentences = [" ".join(clauses) + "."]
    for _ in range(int(rng.integers(0, 2 + round(4 * s)))):
        sentences.insert(int(rng.integers(0, len(sentences) + 1)), str(rng.choice(fillers)))
    words = " ".join(sentences).split(" ")
    words = [_typo(w, rng) if rng.random() < 0.03 else w for w in words]
    label_positive = score > 0 if score != 0 else rng.random() < 0.5
    if rng.random() < 0.04:
        label_positive = not label_positive
    title = None
    if rng.random() < 0.7:
        hint_positive = score > 0 if rng.random() < 0.75 else score <= 0
        title = str(rng.choice(TITLES_POS if hint_positive else TITLES_NEG))
    return " ".join(words), title, "positive" if label_positive else "negative"


def generate(rows: int, shift: float = 0.0, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    s = float(np.clip(shift, 0.0, 1.0))
    texts, titles, labels = (
        zip(*(_review(rng, s) for _ in range(rows)), strict=True) if rows else ((), (), ())
    )
    return pd.DataFrame(
        {
            "text": pd.Series(texts, dtype=object),
            "title": pd.Series(titles, dtype=object),
            "sentiment": pd.Series(labels, dtype=object),
        }
    )
