"""Made data/train.txt and data/val.txt (committed; the harness never runs this): sentences from a small
grammar, drawn with a fixed seed, so that the text has structure a character model can learn.

    python3 data/generate.py
"""

import os
import random

SUBJECTS = ["the cat", "a dog", "the old man", "my sister", "the bird", "a farmer", "the child", "our teacher"]
VERBS = ["sees", "likes", "finds", "carries", "watches", "paints", "follows", "feeds"]
ADJECTIVES = ["red", "small", "quiet", "heavy", "bright", "green", "lazy", "round"]
OBJECTS = ["ball", "house", "river", "apple", "boat", "garden", "lamp", "basket"]
PLACES = ["in the morning", "at night", "by the sea", "near the hill", "after lunch", "in the rain"]


def sentence(rng):
    words = [rng.choice(SUBJECTS), rng.choice(VERBS), "the"]
    if rng.random() < 0.6:
        words.append(rng.choice(ADJECTIVES))
    words.append(rng.choice(OBJECTS))
    if rng.random() < 0.4:
        words.append(rng.choice(PLACES))
    return " ".join(words) + "."


def text(rng, sentences):
    lines = []
    for _ in range(sentences // 4):
        lines.append(" ".join(sentence(rng) for _ in range(4)))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    rng = random.Random(2026)
    with open(os.path.join(here, "train.txt"), "w") as f:
        f.write(text(rng, 1000))
    with open(os.path.join(here, "val.txt"), "w") as f:
        f.write(text(rng, 200))
