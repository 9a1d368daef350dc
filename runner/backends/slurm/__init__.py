"""nnrun on Slurm: batch scripts, parsers of Slurm's output, the client, and the diagnosis of a submission.
"""
