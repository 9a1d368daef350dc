"""The image recipe, shipped inside the package: ``Dockerfile``, ``requirements.in`` and ``requirements.lock``.

``nnrun image build`` builds the image from these files of the *installed*
package (no checkout needed); the repository's top-level ``Dockerfile`` is a
byte-identical copy of :data:`DOCKERFILE` (a unit test keeps them equal).

Standard library only: the image's supervisor imports ``runner`` too, and
``python3 -m runner.image.wheelhouse`` runs under any Python that has pip.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

IMAGE_DIR = Path(__file__).resolve().parent
DOCKERFILE = IMAGE_DIR / "Dockerfile"
LOCK = IMAGE_DIR / "requirements.lock"
REQUIREMENTS_IN = IMAGE_DIR / "requirements.in"

# Image labels nnrun reads (the Dockerfile sets them from build arguments).
LABEL_VERSION = "io.nnrun.version"
LABEL_NNUNET = "io.nnrun.nnunetv2-version"
LABEL_TORCH = "io.nnrun.torch-version"
LABEL_LOCK_DIGEST = "io.nnrun.lock-digest"
LABEL_BASE = "io.nnrun.base-image"


def build_command_for(image: str, engine: str | None = None) -> str:
    """The one command that builds ``image``: ``nnrun image build`` (with --tag unless it is the default image)."""
    from runner import __version__
    command = "nnrun image build"
    if image != f"nnrun:{__version__}":
        command += f" --tag {image}"
    if engine == "podman":
        command += " --runtime podman"
    return command


def digest_bytes(data: bytes) -> str:
    """``sha256:<hex>`` of the bytes (the lock's digest is that of the file as shipped)."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def lock_digest(path: Path | None = None) -> str | None:
    """The digest of the lock this nnrun carries (``None`` if the file is missing: a broken install)."""
    try:
        return digest_bytes((path or LOCK).read_bytes())
    except OSError:
        return None
