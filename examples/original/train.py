"""A CPU stand-in for the original's train.py, so that this project file can be tested without a GPU: it trains
nothing and is not the original's code. It prints a summary block in the original's shape, with a val_bpb that
depends on MATRIX_LR (best at 0.04) and, by a little, on AUTORESEARCH_SEED, so that the harness's parsing, keep
rules and noise measurement have something to measure. For the real thing, see README.md.
"""

import math
import os
import random
import time

MATRIX_LR = 0.01  # the one knob that matters here
DEPTH = 8  # printed in the summary, as the original does

start = time.time()
rng = random.Random(int(os.environ["AUTORESEARCH_SEED"]))
val_bpb = 0.98 + 0.02 * math.log(MATRIX_LR / 0.04) ** 2 + rng.gauss(0.0, 0.0005)
seconds = time.time() - start

print("stand-in training: no model, no data, no GPU")
print("---")
print(f"val_bpb:          {val_bpb:.6f}")
print(f"training_seconds: {seconds:.1f}")
print(f"total_seconds:    {seconds:.1f}")
print(f"peak_vram_mb:     {0.0:.1f}")
print(f"mfu_percent:      {0.0:.2f}")
print(f"total_tokens_M:   {0.0:.1f}")
print(f"num_steps:        {0}")
print(f"num_params_M:     {0.0:.1f}")
print(f"depth:            {DEPTH}")
