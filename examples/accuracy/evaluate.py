"""The fixed evaluation (not editable): scores the trained model, $AUTORESEARCH_OUTPUT/model.json, on the held-out
data/test.csv and prints `accuracy: X`, the fraction of its rows whose class the model predicts.

It runs none of the agent's code: the model is data (per feature a mean and a scale; per class a weight for each
scaled feature and a bias; the prediction is the class of the highest score). A malformed model is an error
(exit 1) that says what is wrong.
"""

import csv
import json
import math
import os
import sys


def fail(message):
    print(f"evaluate.py: {message}", file=sys.stderr)
    sys.exit(1)


def numbers(value, length, what):
    if not isinstance(value, list) or len(value) != length:
        fail(f"model.json: {what} must be a list of {length} numbers")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            fail(f"model.json: {what} holds {v!r}, not a finite number")
    return value


def load_model(path, features, classes):
    try:
        with open(path) as f:
            model = json.load(f)
    except (OSError, ValueError) as e:
        fail(f"cannot read the model {path}: {e}")
    if not isinstance(model, dict):
        fail("model.json: not an object")
    if model.get("features") != features:
        fail(f"model.json: features must be {features}, the test data's columns, not {model.get('features')!r}")
    if model.get("classes") != classes:
        fail(f"model.json: classes must be {classes}, in this order, not {model.get('classes')!r}")
    mean = numbers(model.get("mean"), len(features), "mean")
    scale = numbers(model.get("scale"), len(features), "scale")
    if any(s == 0 for s in scale):
        fail("model.json: a scale is 0")
    weights = model.get("weights")
    if not isinstance(weights, list) or len(weights) != len(classes):
        fail(f"model.json: weights must be {len(classes)} lists, one per class")
    for k, row in enumerate(weights):
        numbers(row, len(features), f"weights[{k}]")
    bias = numbers(model.get("bias"), len(classes), "bias")
    return mean, scale, weights, bias


def main():
    with open("data/test.csv") as f:
        rows = list(csv.DictReader(f))
    features = [name for name in rows[0] if name != "label"]
    classes = sorted({row["label"] for row in rows})
    mean, scale, weights, bias = load_model(
        os.path.join(os.environ["AUTORESEARCH_OUTPUT"], "model.json"), features, classes
    )
    correct = 0
    for row in rows:
        x = [(float(row[name]) - m) / s for name, m, s in zip(features, mean, scale)]
        scores = [sum(w * v for w, v in zip(ws, x)) + b for ws, b in zip(weights, bias)]
        correct += classes[scores.index(max(scores))] == row["label"]
    print(f"accuracy: {correct / len(rows):.4f}")


main()
