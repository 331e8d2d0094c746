import math

import numpy as np

from fsar_cli.evaluation.metrics import accuracy, mean_and_ci95


def test_mean_and_ci95_by_hand() -> None:
    accs = [1.0, 0.0, 1.0, 1.0]  # mean 0.75, population std sqrt(0.1875)
    mean, ci = mean_and_ci95(accs)
    assert mean == 0.75
    assert math.isclose(ci, 1.96 * math.sqrt(0.1875) / 2.0)
    m, c = mean_and_ci95([0.5] * 10)
    assert m == 0.5 and c == 0.0


def test_accuracy_per_episode() -> None:
    logits = np.array([[[3.0, 1.0], [0.0, 2.0]], [[1.0, 2.0], [5.0, 0.0]]])  # [E=2, Nq=2, W=2]
    labels = np.array([[0, 1], [0, 1]])
    np.testing.assert_allclose(accuracy(logits, labels), [1.0, 0.0])
