"""A stand-in for the original's prepare.py, which downloads the data shards, trains the tokenizer (both into
~/.cache/autoresearch/) and holds the fixed constants (TIME_BUDGET = 300), the dataloader and evaluate_bpb, the
metric. The stand-in train.py needs none of that, so this does nothing; with the original, run its own prepare.py
once by hand (`uv run prepare.py`) before the session.
"""
