"""The fixed evaluation (not editable): scores the trained model, $AUTORESEARCH_OUTPUT/model.json, on the held-out
text data/val.txt and prints `val_loss: X`, the mean cross-entropy in nats per character.

It runs none of the agent's code: it reads the model as data and normalises the logits itself, so a model can only
be judged as the probabilities it assigns. A malformed model is an error (exit 1) that says what is wrong.
"""

import json
import math
import os
import sys

MAX_CONTEXT = 8  # every model is scored on the same characters: those after the first MAX_CONTEXT


def fail(message):
    print(f"evaluate.py: {message}", file=sys.stderr)
    sys.exit(1)


def logits_row(value, vocab_size, what):
    if not isinstance(value, list) or len(value) != vocab_size:
        fail(f"model.json: {what} must be a list of {vocab_size} numbers")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            fail(f"model.json: {what} holds {v!r}, not a finite number")
    return value


def load_model(path):
    try:
        with open(path) as f:
            model = json.load(f)
    except (OSError, ValueError) as e:
        fail(f"cannot read the model {path}: {e}")
    if not isinstance(model, dict):
        fail("model.json: not an object")
    context, vocab = model.get("context"), model.get("vocab")
    if isinstance(context, bool) or not isinstance(context, int) or not 0 <= context <= MAX_CONTEXT:
        fail(f"model.json: context must be an integer from 0 to {MAX_CONTEXT}, not {context!r}")
    if not isinstance(vocab, str) or len(set(vocab)) != len(vocab):
        fail("model.json: vocab must be a string of distinct characters")
    default = logits_row(model.get("default"), len(vocab), "default")
    table = model.get("table")
    if not isinstance(table, dict):
        fail("model.json: table must be an object from context to logits")
    for key, row in table.items():
        if len(key) != context:
            fail(f"model.json: table key {key!r} is not {context} characters long")
        logits_row(row, len(vocab), f"table[{key!r}]")
    return context, vocab, default, table


def log_sum_exp(row):
    top = max(row)
    return top + math.log(sum(math.exp(v - top) for v in row))


def main():
    context, vocab, default, table = load_model(os.path.join(os.environ["AUTORESEARCH_OUTPUT"], "model.json"))
    with open("data/val.txt") as f:
        text = f.read()
    index = {ch: i for i, ch in enumerate(vocab)}
    missing = sorted(set(text) - set(index))
    if missing:
        fail(f"model.json: vocab lacks {missing!r}, which the validation text holds")
    total = 0.0
    for i in range(MAX_CONTEXT, len(text)):
        row = table.get(text[i - context : i], default)
        total += log_sum_exp(row) - row[index[text[i]]]
    print(f"val_loss: {total / (len(text) - MAX_CONTEXT):.6f}")


main()
