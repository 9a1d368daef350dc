"""Code that runs inside the image (or under --runtime host): the supervisor, the agent that wraps
nnU-Net's processes, its preprocessing wrappers and worker pool.

stdlib + nnU-Net only; may import `runner.rundir`, `runner.errors`, `runner.cgroup` and `runner.shards`,
never host code (no docker, typer, rich, matplotlib).
"""
