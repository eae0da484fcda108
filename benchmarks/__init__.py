"""Benchmarks for tinygraph: one training step of a tanh RNN against a hand-written numpy floor.

Run ``python -m benchmarks --help`` from the repository root.  Modules:

- ``floor``   the hand-written numpy BPTT (the floor every ratio is taken against)
- ``impls``   tinygraph (``rnn.RecurrentNet.unroll`` + ``ff.run`` + ``tg.SGD``) and optional PyTorch
- ``measure`` interleaved timing, gradient agreement, peak memory, build scaling, machine info
- ``report``  the printed table, the JSON file and ``benchmarks/RESULTS.md``
"""

from collections import namedtuple

Config = namedtuple("Config", "name H B T I")

# issue 7: hidden H, batch B, steps T, input = output size I
CONFIGS = {
    "tiny": Config("tiny", 16, 1, 20, 4),
    "medium": Config("medium", 128, 32, 100, 32),
    "large": Config("large", 512, 64, 100, 64),
    "long": Config("long", 64, 8, 2000, 8),
}
# --quick: same shapes of problem, sizes small enough for a smoke run
QUICK_CONFIGS = {
    "tiny": Config("tiny", 8, 1, 10, 3),
    "medium": Config("medium", 16, 4, 20, 5),
    "large": Config("large", 24, 6, 20, 6),
    "long": Config("long", 8, 2, 200, 3),
}

# issue 7's goals for tinygraph, as ratios to the floor (same dtype on both sides)
GOALS = {"tiny": 3.0, "medium": 1.2, "large": 1.1, "long": 2.0}
BUILD_GOAL_S = 45.0        # 100,000 steps of a small net: build, compile, forward, backward
MEMORY_GOAL = 1.3          # peak memory at 'long' against the floor's
# the reference measurements (float32, 2 cores), as ratios to its floor
REFERENCE = {
    "torch loop": {"tiny": 13.8, "medium": 2.5, "large": 1.0, "long": 10.2},
    "torch nn.RNN": {"tiny": 5.7, "medium": 1.35, "large": 1.0, "long": 3.5},
    "JAX lax.scan jit": {"tiny": 1.05, "medium": 1.05, "large": 1.05, "long": 1.05},
    "HIPS autograd": {"tiny": 43, "medium": 5.2, "large": 1.5, "long": 40},
}
