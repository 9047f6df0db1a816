"""A character-level language model, the file the agent edits: a table of next-character logits for each context
(the last CONTEXT characters of the text), trained by minibatch SGD on the softmax cross-entropy.

It reads data/train.txt, takes its randomness from AUTORESEARCH_SEED, stops early if AUTORESEARCH_TIME_BUDGET
runs out, and writes the model to $AUTORESEARCH_OUTPUT/model.json, which evaluate.py scores on data/val.txt.
"""

import json
import math
import os
import random
import time

LEARNING_RATE = 0.2  # step size of SGD
STEPS = 300  # SGD steps
BATCH_SIZE = 32  # positions per step
CONTEXT = 1  # characters of context (1: a bigram model); evaluate.py allows up to 8
INIT_SCALE = 0.1  # standard deviation of the initial logits

started = time.monotonic()
seed = int(os.environ["AUTORESEARCH_SEED"])
output = os.environ["AUTORESEARCH_OUTPUT"]
budget = float(os.environ.get("AUTORESEARCH_TIME_BUDGET", "inf"))
rng = random.Random(seed)

with open("data/train.txt") as f:
    text = f.read()
vocab = "".join(sorted(set(text)))
index = {ch: i for i, ch in enumerate(vocab)}
targets = [index[ch] for ch in text]

# The fallback for a context the training never saw: the log of the smoothed character frequencies.
counts = [1.0] * len(vocab)
for t in targets:
    counts[t] += 1
default = [math.log(c / sum(counts)) for c in counts]

contexts = sorted({text[i - CONTEXT : i] for i in range(CONTEXT, len(text))})
table = {c: [rng.gauss(0.0, INIT_SCALE) for _ in vocab] for c in contexts}

step_size = LEARNING_RATE / BATCH_SIZE
smoothed = None
for step in range(STEPS):
    if time.monotonic() - started > budget:
        print(f"time budget reached after {step} steps")
        break
    loss = 0.0
    for _ in range(BATCH_SIZE):
        i = rng.randrange(CONTEXT, len(text))
        row = table[text[i - CONTEXT : i]]
        top = max(row)
        exps = [math.exp(v - top) for v in row]
        total = sum(exps)
        y = targets[i]
        loss += math.log(total) - (row[y] - top)
        for j, e in enumerate(exps):
            row[j] -= step_size * (e / total - (j == y))
    loss /= BATCH_SIZE
    smoothed = loss if smoothed is None else 0.9 * smoothed + 0.1 * loss
    if step % 100 == 0 or step == STEPS - 1:
        print(f"step {step:4d}  loss {smoothed:.4f}")

with open(os.path.join(output, "model.json"), "w") as f:
    json.dump({"context": CONTEXT, "vocab": vocab, "default": default, "table": table}, f)
print(f"trained in {time.monotonic() - started:.2f} s")
