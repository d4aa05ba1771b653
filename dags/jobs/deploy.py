"""Deploy: copy the approved model into the models folder and mark it current."""

import argparse
import json
import os
import shutil

from common import input_dir


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models-dir", required=True)
    args = parser.parse_args()

    run_id = os.environ.get("TRAINYARD_RUN_ID", "manual")
    os.makedirs(args.models_dir, exist_ok=True)
    target = os.path.join(args.models_dir, f"churn-{run_id}.json")
    shutil.copyfile(os.path.join(input_dir("train"), "model.json"), target)
    with open(os.path.join(args.models_dir, "CURRENT"), "w", encoding="utf-8") as f:
        json.dump({"model": os.path.basename(target), "run_id": run_id}, f)
    print(f"deployed {target}")


if __name__ == "__main__":
    main()
