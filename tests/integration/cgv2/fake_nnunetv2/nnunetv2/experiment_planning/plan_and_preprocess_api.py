"""nnU-Net's API module imports verify_dataset_integrity by name (the agent patches that reference)."""
from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

__all__ = ["verify_dataset_integrity"]
