"""Word frequencies, the module the agent makes faster: word_frequencies(text) returns every word of the text with
its count, most frequent first, ties in alphabetical order. A word is a run of non-space characters, lowercased,
with everything but the letters a-z and the apostrophe removed; what is left empty is not a word.

This version is correct and deliberately slow. bench.py times it; check.py compares it with a reference.
"""

LETTERS = "abcdefghijklmnopqrstuvwxyz'"


def normalise(raw):
    word = ""
    for ch in raw.lower():
        if ch in LETTERS:
            word += ch
    return word


def by_count_then_word(pair):
    return (-pair[1], pair[0])


def insertion_sort(pairs):
    result = []
    for pair in pairs:
        key = by_count_then_word(pair)
        position = len(result)
        while position > 0 and by_count_then_word(result[position - 1]) > key:
            position -= 1
        result.insert(position, pair)
    return result


def word_frequencies(text):
    counts = {}
    for raw in text.split():
        word = normalise(raw)
        if word:
            counts[word] = counts.get(word, 0) + 1
    return insertion_sort(list(counts.items()))
