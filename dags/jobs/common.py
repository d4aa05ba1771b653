"""Helpers shared by the churn_retrain jobs: where to read inputs and write outputs.

Trainyard gives every task TRAINYARD_OUTPUT_DIR (what it leaves there is kept as
its artifact), TRAINYARD_INPUT_DIR (upstream outputs, one folder per upstream
task) and TRAINYARD_METRICS_FILE (a JSON object of numbers). Run by hand, the
jobs fall back to a local ./.trainyard-local folder so they stay easy to debug.
"""

import json
import os
import sys

LOCAL = os.path.join(os.getcwd(), ".trainyard-local")


def output_dir(task):
    path = os.environ.get("TRAINYARD_OUTPUT_DIR") or os.path.join(LOCAL, task)
    os.makedirs(path, exist_ok=True)
    return path


def input_dir(upstream):
    base = os.environ.get("TRAINYARD_INPUT_DIR")
    path = os.path.join(base, upstream) if base else os.path.join(LOCAL, upstream)
    if not os.path.isdir(path):
        sys.exit(f"missing input from upstream task {upstream!r}: {path} does not exist")
    return path


def write_metrics(metrics):
    path = os.environ.get("TRAINYARD_METRICS_FILE") or os.path.join(LOCAL, "metrics.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(metrics, f)
    print("metrics:", json.dumps(metrics))


def parse_bool(text):
    return str(text).strip().lower() in ("1", "true", "yes", "on")
