"""Names that the Job manifests (:mod:`runner.backends.k8s.jobs`) write and the diagnosis of their pods
(:mod:`runner.backends.k8s.pods`) reads: the container, the roles, nnrun's labels and annotations.
"""
from __future__ import annotations

COMPLETION_INDEX_KEY = "batch.kubernetes.io/job-completion-index"   # annotation (and label since 1.28)
CONTAINER_NAME = "nnrun"
LABEL_DATASET = "io.nnrun.dataset"
LABEL_ROLE = "io.nnrun.role"                # "plan" or "shards"
LABEL_SHARD_COUNT = "io.nnrun.shard-count"
LABEL_VERSION = "io.nnrun.version"
ANNOTATION_ARGV = "io.nnrun.manifest-argv"  # JSON list: the `nnrun k8s manifest` command that made the Job
ROLE_PLAN = "plan"
ROLE_SHARDS = "shards"
