"""Made data/train.csv and data/test.csv (committed; the harness never runs this): three classes of points in four
features, Gaussian clouds that overlap a little, the features on very different scales (the second and fourth in
tens, the others in units) and the fourth pure noise, drawn with a fixed seed.

    python3 data/generate.py
"""

import os
import random

CENTRES = {"alpha": (0.0, 0.0, 0.0), "beta": (2.0, 60.0, 1.0), "gamma": (-1.0, 90.0, -1.5)}
SPREAD = (1.0, 25.0, 1.0)


def rows(rng, n):
    out = []
    for i in range(n):
        label = sorted(CENTRES)[i % 3]
        point = [rng.gauss(c, s) for c, s in zip(CENTRES[label], SPREAD)] + [rng.gauss(0.0, 40.0)]
        out.append(",".join(f"{v:.3f}" for v in point) + f",{label}")
    rng.shuffle(out)
    return "f1,f2,f3,f4,label\n" + "\n".join(out) + "\n"


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    rng = random.Random(7)
    with open(os.path.join(here, "train.csv"), "w") as f:
        f.write(rows(rng, 600))
    with open(os.path.join(here, "test.csv"), "w") as f:
        f.write(rows(rng, 900))
