"""The benchmark (fixed, not editable): times fast.word_frequencies on a text of BENCH_WORDS words and prints
`METRIC seconds=X`: the least CPU time of REPEATS runs. CPU time (of this process), not wall time, so that other
work on a shared machine changes the result little; the best of several runs, so that a run disturbed anyway
(caches, an interrupt) does not count.

The text is drawn from a fixed vocabulary with mixed case and punctuation; AUTORESEARCH_SEED chooses its words, so
every seed gives the same amount of work on a different text.
"""

import os
import random
import sys
import time

sys.dont_write_bytecode = True  # the project folder is read-only to the benchmark

import fast  # noqa: E402  (after the line above, so that no __pycache__ is attempted)

BENCH_WORDS = 10_000
REPEATS = 10


def vocabulary(rng, size):
    words = set()
    while len(words) < size:
        words.add("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))))
    return sorted(words)


def bench_text(seed):
    rng = random.Random(seed)
    words = vocabulary(random.Random(0), 1500)
    out = []
    for _ in range(BENCH_WORDS):
        word = rng.choice(words[: rng.randint(1, len(words))])  # a skewed distribution, as in real text
        if rng.random() < 0.2:
            word = word.capitalize()
        if rng.random() < 0.1:
            word += rng.choice(".,;:!?")
        out.append(word)
    return " ".join(out)


text = bench_text(int(os.environ["AUTORESEARCH_SEED"]))
best = float("inf")
for _ in range(REPEATS):
    start = time.process_time()
    fast.word_frequencies(text)
    best = min(best, time.process_time() - start)
print(f"words: {BENCH_WORDS}, best of {REPEATS} runs")
print(f"METRIC seconds={best:.6f}")
