"""Writes the arrays of losses/npy_linear.toml (numpy 2.4.6): python losses/data/make_linear.py"""

from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
rng = np.random.default_rng(0)
# Four features on scales 1, 1, 10 and 0.1: curvatures 100x apart along the third and fourth.
X = rng.standard_normal((128, 4)) * np.array([1.0, 1.0, 10.0, 0.1])
w_true = np.array([1.5, -2.0, 0.3, 4.0])
y = X @ w_true + 0.5 + 0.1 * rng.standard_normal(128)
np.save(HERE / "linear_X.npy", X.astype(np.float32))  # float32, as features often come
np.save(HERE / "linear_y.npy", y)  # float64
np.save(HERE / "linear_w0.npy", 0.1 * rng.standard_normal(4))  # a starting point, float64
