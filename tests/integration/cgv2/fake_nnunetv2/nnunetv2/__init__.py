"""A stand-in for nnU-Net v2 in the slim cgroup v2 test image (docs/tests.md, "The cgroup v2 guest")."""
