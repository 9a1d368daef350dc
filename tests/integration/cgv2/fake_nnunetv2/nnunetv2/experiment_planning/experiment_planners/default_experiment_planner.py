"""Planning: nnU-Net's main process alone (a main-process OOM kill happens here)."""
import json
import os

from nnunetv2 import fake
from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw


def save_json(obj, file: str, sort_keys: bool = True) -> None:
    with open(file, "w") as fh:
        json.dump(obj, fh, sort_keys=sort_keys, indent=4)


def plan_experiment(dataset_name: str, plans_name: str = "nnUNetPlans") -> str:
    main_mb = int(fake.spec(os.path.join(nnUNet_raw, dataset_name)).get("main_alloc_mb", 0))
    held = fake.allocate(main_mb) if main_mb else b""
    out = os.path.join(nnUNet_preprocessed, dataset_name)
    save_json({"plans_name": plans_name, "dataset_name": dataset_name, "held": len(held)},
              os.path.join(out, plans_name + ".json"))
    with open(os.path.join(nnUNet_raw, dataset_name, "dataset.json")) as fh:
        save_json(json.load(fh), os.path.join(out, "dataset.json"))
    return plans_name
