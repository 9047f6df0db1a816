"""The constants the agent tunes: the point at which score.py measures its loss. The best is at 0 everywhere, with a
local minimum near every other integer point."""

X1 = 3.2
X2 = -2.9
X3 = 2.1
X4 = -3.8
