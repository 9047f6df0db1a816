"""A linear classifier, the file the agent edits: softmax regression trained by averaged SGD (the model is the mean
of the weights over every step, steadier than the last step's) on data/train.csv (four numeric features, three
classes). It takes its randomness from AUTORESEARCH_SEED and writes the model to
$AUTORESEARCH_OUTPUT/model.json, which evaluate.py scores on the held-out data/test.csv.
"""

import csv
import json
import math
import os
import random

LEARNING_RATE = 0.0003  # SGD step size
EPOCHS = 3  # passes over the training set, each in a new random order
STANDARDIZE = False  # scale each feature to mean 0 and standard deviation 1 before training
L2 = 0.0  # weight decay

rng = random.Random(int(os.environ["AUTORESEARCH_SEED"]))
output = os.environ["AUTORESEARCH_OUTPUT"]

with open("data/train.csv") as f:
    rows = list(csv.DictReader(f))
features = [name for name in rows[0] if name != "label"]
classes = sorted({row["label"] for row in rows})
xs = [[float(row[name]) for name in features] for row in rows]
ys = [classes.index(row["label"]) for row in rows]

if STANDARDIZE:
    mean = [sum(column) / len(column) for column in zip(*xs)]
    scale = [math.sqrt(sum((v - m) ** 2 for v in column) / len(column)) or 1.0 for column, m in zip(zip(*xs), mean)]
else:
    mean, scale = [0.0] * len(features), [1.0] * len(features)
xs = [[(v - m) / s for v, m, s in zip(x, mean, scale)] for x in xs]

weights = [[rng.gauss(0.0, 0.01) for _ in features] for _ in classes]
bias = [0.0] * len(classes)
mean_weights = [[0.0] * len(features) for _ in classes]
mean_bias = [0.0] * len(classes)
steps = 0
order = list(range(len(xs)))
for epoch in range(EPOCHS):
    rng.shuffle(order)
    loss = 0.0
    for i in order:
        x, y = xs[i], ys[i]
        scores = [sum(w * v for w, v in zip(row, x)) + b for row, b in zip(weights, bias)]
        top = max(scores)
        exps = [math.exp(s - top) for s in scores]
        total = sum(exps)
        loss += math.log(total) - (scores[y] - top)
        for k, e in enumerate(exps):
            gradient = e / total - (k == y)
            weights[k] = [w - LEARNING_RATE * (gradient * v + L2 * w) for w, v in zip(weights[k], x)]
            bias[k] -= LEARNING_RATE * gradient
        steps += 1
        for k in range(len(classes)):
            mean_weights[k] = [m + (w - m) / steps for m, w in zip(mean_weights[k], weights[k])]
            mean_bias[k] += (bias[k] - mean_bias[k]) / steps
    print(f"epoch {epoch}  loss {loss / len(xs):.4f}")

with open(os.path.join(output, "model.json"), "w") as f:
    model = {"features": features, "classes": classes, "mean": mean, "scale": scale}
    model["weights"], model["bias"] = mean_weights, mean_bias
    json.dump(model, f)
