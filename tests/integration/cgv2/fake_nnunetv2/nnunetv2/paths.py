"""nnU-Net's folders, from the same environment variables nnU-Net reads."""
import os

nnUNet_raw = os.environ.get("nnUNet_raw")
nnUNet_preprocessed = os.environ.get("nnUNet_preprocessed")
nnUNet_results = os.environ.get("nnUNet_results")
