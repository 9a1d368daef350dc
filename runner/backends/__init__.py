"""Scale-out on existing engines: Slurm (`backends.slurm`) and Kubernetes (`backends.k8s`).
"""
