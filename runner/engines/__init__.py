"""Container engines behind one protocol (`base.Engine`): Docker, Podman's Docker API, and the host.

Only `engines.docker` imports the Docker SDK; everything above sees plain data.
"""
