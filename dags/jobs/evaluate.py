"""Evaluate: score the held-out rows and report auc, accuracy and log loss as metrics."""

import json
import math
import os

from common import input_dir, write_metrics
from train import load, sigmoid


def auc(scores, labels):
    """Area under the ROC curve via the rank-sum (Mann-Whitney U) formula, ties averaged."""
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2.0 + 1.0
        i = j + 1
    pos = sum(labels)
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return 0.5
    rank_sum = sum(r for r, y in zip(ranks, labels) if y == 1)
    return (rank_sum - pos * (pos + 1) / 2.0) / (pos * neg)


def main():
    trained = input_dir("train")
    with open(os.path.join(trained, "model.json"), encoding="utf-8") as f:
        model = json.load(f)
    _, test_x, test_y = load(os.path.join(trained, "holdout.csv"))
    scores = []
    for row in test_x:
        z = model["bias"] + sum(
            w * (v - m) / s for w, v, m, s in zip(model["weights"], row, model["means"], model["stds"])
        )
        scores.append(sigmoid(z))
    accuracy = sum((p >= 0.5) == (y == 1) for p, y in zip(scores, test_y)) / len(test_y)
    log_loss = -sum(
        y * math.log(p + 1e-12) + (1 - y) * math.log(1 - p + 1e-12) for p, y in zip(scores, test_y)
    ) / len(test_y)
    write_metrics({"auc": round(auc(scores, test_y), 6), "accuracy": round(accuracy, 6), "log_loss": round(log_loss, 6), "holdout_rows": len(test_y)})


if __name__ == "__main__":
    main()
