"""nnrun on Kubernetes: Job manifests and the diagnosis of their pods.
"""
