"""The fixed 'training' of the synthetic project: a Rastrigin function of the four constants in params.py (many
local minima, the global one at 0), plus seed noise, printed as `loss: X`. It takes a few milliseconds, so that a
search's own cost is what a benchmark of searches measures."""

import math
import os
import random

import params

NOISE = 0.05  # the seed-to-seed spread of the loss

xs = [params.X1, params.X2, params.X3, params.X4]
value = 10 * len(xs) + sum(x * x - 10 * math.cos(2 * math.pi * x) for x in xs)
rng = random.Random(int(os.environ["AUTORESEARCH_SEED"]))
print(f"loss: {value + rng.gauss(0.0, NOISE):.6f}")
