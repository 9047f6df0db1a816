"""The correctness check (fixed, not editable): compares fast.word_frequencies with a reference implementation on
fixed inputs and exits 1, naming the input and the first difference, when they disagree. The harness runs it
before a keep: a faster module that counts wrong is not kept.
"""

import random
import sys

sys.dont_write_bytecode = True  # the project folder is read-only to the check

import fast  # noqa: E402

LETTERS = set("abcdefghijklmnopqrstuvwxyz'")


def reference(text):
    counts = {}
    for raw in text.split():
        word = "".join(ch for ch in raw.lower() if ch in LETTERS)
        if word:
            counts[word] = counts.get(word, 0) + 1
    return sorted(counts.items(), key=lambda pair: (-pair[1], pair[0]))


def generated(seed, words):
    rng = random.Random(seed)
    vocabulary = ["the", "cat", "Cat", "don't", "naïve", "co-op", "x", "ab", "ba", "word", "Words", "ok"]
    out = []
    for _ in range(words):
        word = rng.choice(vocabulary)
        if rng.random() < 0.3:
            word = word.upper()
        if rng.random() < 0.3:
            word = rng.choice("\"(") + word + rng.choice(".,;:!?)\"")
        out.append(word)
    return rng.choice([" ", "\n", "\t", "  "]).join(out)


CASES = [
    ("empty", ""),
    ("spaces only", "  \n\t "),
    ("punctuation only", "... !! -- ?"),
    ("case", "The the THE tHe"),
    ("punctuation", "end. end, (end) end! 'end'"),
    ("apostrophes", "don't dont don't' ''"),
    ("ties in alphabetical order", "b a c b a c d"),
    ("digits and non-ascii", "r2d2 café 42 naïve über"),
    ("newlines and tabs", "one\ttwo\nthree  one\r\ntwo"),
    ("generated, 2000 words", generated(1, 2000)),
    ("generated, 20000 words", generated(2, 20000)),
]

failures = 0
for name, text in CASES:
    expected = reference(text)
    try:
        got = [tuple(pair) for pair in fast.word_frequencies(text)]
    except Exception as e:  # noqa: BLE001: any error of the module is a failed check, reported as such
        print(f"check.py: {name}: word_frequencies raised {type(e).__name__}: {e}")
        failures += 1
        continue
    if got != expected:
        first = next((i for i, (g, e) in enumerate(zip(got, expected)) if g != e), min(len(got), len(expected)))
        print(
            f"check.py: {name}: wrong result: {len(got)} pairs where the reference has {len(expected)}; "
            f"first difference at position {first}: got {got[first : first + 3]}, "
            f"expected {expected[first : first + 3]}"
        )
        failures += 1
if failures:
    print(f"check.py: FAILED: {failures} of {len(CASES)} inputs")
    sys.exit(1)
print(f"check.py: all {len(CASES)} inputs agree with the reference")
