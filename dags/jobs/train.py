"""Train: fit a logistic-regression churn model with batch gradient descent."""

import argparse
import csv
import json
import math
import os

from common import input_dir, output_dir, parse_bool


def load(path):
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = [[float(v) for v in r] for r in reader]
    return header[:-1], [r[:-1] for r in rows], [int(r[-1]) for r in rows]


def standardize(xs):
    cols = list(zip(*xs))
    means = [sum(c) / len(c) for c in cols]
    stds = [math.sqrt(sum((v - m) ** 2 for v in c) / len(c)) or 1.0 for c, m in zip(cols, means)]
    return means, stds


def sigmoid(z):
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--force-bad-model", default="false")
    args = parser.parse_args()

    features, xs, ys = load(os.path.join(input_dir("ingest"), "dataset.csv"))
    split = int(len(xs) * 0.8)  # the last 20% are held out for evaluation
    train_x, train_y = xs[:split], ys[:split]
    means, stds = standardize(train_x)
    norm = [[(v - m) / s for v, m, s in zip(row, means, stds)] for row in train_x]

    weights, bias = [0.0] * len(features), 0.0
    n = len(norm)
    for epoch in range(args.epochs):
        grad_w, grad_b, loss = [0.0] * len(weights), 0.0, 0.0
        for row, y in zip(norm, train_y):
            p = sigmoid(bias + sum(w * x for w, x in zip(weights, row)))
            err = p - y
            grad_b += err
            for i, x in enumerate(row):
                grad_w[i] += err * x
            loss -= y * math.log(p + 1e-12) + (1 - y) * math.log(1 - p + 1e-12)
        weights = [w - args.lr * g / n for w, g in zip(weights, grad_w)]
        bias -= args.lr * grad_b / n
        if epoch % 50 == 0 or epoch == args.epochs - 1:
            print(f"epoch {epoch} loss {loss / n:.4f}", flush=True)

    if parse_bool(args.force_bad_model):
        # A deliberately broken model (inverted weights) so users can watch the
        # evaluation gate refuse to deploy it.
        weights, bias = [-w for w in weights], -bias
        print("force_bad_model=true: inverted the model's weights")

    model = {"features": features, "means": means, "stds": stds, "weights": weights, "bias": bias}
    out_dir = output_dir("train")
    # Hand the held-out rows on with the model: evaluate reads only its direct upstream.
    with open(os.path.join(out_dir, "holdout.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(features + ["churned"])
        writer.writerows(row + [y] for row, y in zip(xs[split:], ys[split:]))
    out = os.path.join(out_dir, "model.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump(model, f, indent=2)
    print(f"model written to {out}")


if __name__ == "__main__":
    main()
