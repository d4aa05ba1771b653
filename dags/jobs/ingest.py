"""Ingest: write a synthetic churn dataset (CSV) for the logical date."""

import argparse
import csv
import os
import random

from common import output_dir

FEATURES = ["tenure_months", "monthly_spend", "support_tickets", "logins_per_week", "discount"]
TRUE_WEIGHTS = [-0.08, 0.03, 0.6, -0.35, -1.2]
BIAS = -0.5


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--date", required=True)
    parser.add_argument("--samples", type=int, default=4000)
    args = parser.parse_args()

    rng = random.Random(args.date)  # same date, same data: reruns are reproducible
    out = os.path.join(output_dir("ingest"), "dataset.csv")
    churned = 0
    with open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(FEATURES + ["churned"])
        for _ in range(args.samples):
            row = [
                rng.uniform(1, 72),
                rng.uniform(10, 120),
                rng.randint(0, 8),
                rng.uniform(0, 14),
                rng.choice([0.0, 0.0, 0.1, 0.2]),
            ]
            z = BIAS + sum(w * x for w, x in zip(TRUE_WEIGHTS, row)) + rng.gauss(0, 0.8)
            label = 1 if z > 0 else 0
            churned += label
            writer.writerow([f"{v:.4f}" for v in row] + [label])
    print(f"ingested {args.samples} rows for {args.date} ({churned} churned) -> {out}")


if __name__ == "__main__":
    main()
