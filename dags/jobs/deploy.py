"""Deploy: publish the approved model and mark it current.

The model and a CURRENT marker go to this task's output folder, which
Trainyard uploads to the artifact store (runs/<run>/deploy/<attempt>/out/):
in this example the artifact store is the model registry, reachable from any
machine. With --models-dir (a shared folder every worker sees), they are
also copied there.
"""

import argparse
import json
import os
import shutil

from common import input_dir, output_dir


def publish(models_dir, run_id):
    os.makedirs(models_dir, exist_ok=True)
    target = os.path.join(models_dir, f"churn-{run_id}.json")
    shutil.copyfile(os.path.join(input_dir("train"), "model.json"), target)
    with open(os.path.join(models_dir, "CURRENT"), "w", encoding="utf-8") as f:
        json.dump({"model": os.path.basename(target), "run_id": run_id}, f)
    print(f"deployed {target}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models-dir", default="")
    args = parser.parse_args()

    run_id = os.environ.get("TRAINYARD_RUN_ID", "manual")
    publish(output_dir("deploy"), run_id)
    if args.models_dir:
        publish(args.models_dir, run_id)


if __name__ == "__main__":
    main()
