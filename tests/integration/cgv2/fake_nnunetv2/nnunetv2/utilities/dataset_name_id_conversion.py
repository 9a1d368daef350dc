"""Dataset id -> DatasetNNN_Name, as nnU-Net resolves it (from nnUNet_raw)."""
import os

from nnunetv2.paths import nnUNet_raw


def maybe_convert_to_dataset_name(dataset_name_or_id) -> str:
    text = str(dataset_name_or_id)
    if text.startswith("Dataset"):
        return text
    prefix = f"Dataset{int(text):03d}_"
    for name in sorted(os.listdir(nnUNet_raw)):
        if name.startswith(prefix):
            return name
    raise RuntimeError(f"Could not find a dataset with the ID {text}")
