"""A stand-in for nnU-Net v2 in the slim cgroup v2 test image (see tests/integration/cgv2/README.md)."""
