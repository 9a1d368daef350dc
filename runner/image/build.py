"""``nnrun image build``: build the nnrun image from the recipe inside the installed package.

Steps (each one a progress line):

1. connect to the engine (a daemon that is down is ``infra`` before anything else);
2. read the lock this package carries and its digest;
3. fill the wheelhouse (``<cache>/wheels``) from the lock with the host's pip
   (:mod:`runner.image.wheelhouse`);
4. the base image: the default (``python:3.11-slim``) when present or
   pullable; else a local Debian base made with debootstrap and imported
   (``nnrun-base:bookworm``), when debootstrap is there and nnrun runs as root;
   else a one-line error saying what to install;
5. the build context, a fresh folder under the cache: ``wheels/`` (hard links
   of exactly the lock's wheels) and ``runner/`` (the installed package's
   files; the Dockerfile is ``runner/image/Dockerfile`` in it);
6. the build through the engine seam (:meth:`DockerEngine.build_image`), then a
   check that the image's ``io.nnrun.lock-digest`` label is this lock's.

The pure parts (tag check, build arguments, the context's layout, the apt
mirror) are plain functions, unit-tested; the rest drives the engine and pip.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import runner
from runner import __version__
from runner.errors import BadInputError, InfraError
from runner.image import DOCKERFILE, LABEL_LOCK_DIGEST, LOCK, digest_bytes
from runner.image.lock import Lock, LockError, parse_lock
from runner.image.wheelhouse import default_cache, ensure_wheelhouse

Progress = Callable[[str], None]

DEFAULT_BASE = "python:3.11-slim"
LOCAL_BASE = "nnrun-base:bookworm"
DEBIAN_SUITE = "bookworm"
DOCKERFILE_IN_CONTEXT = "runner/image/Dockerfile"
PULL_TIMEOUT_S = 90
DEBOOTSTRAP_HINT = ("install debootstrap (`apt-get install debootstrap`) and run nnrun image build as root, "
                    f"or pass --base-image with a local image that has Python 3.11 (e.g. `docker pull {DEFAULT_BASE}` "
                    "where a registry is reachable)")

# A Docker image reference: [registry[:port]/]path[:tag] (lower-case path, tag of word characters, . and -).
_REF_RE = re.compile(r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
                     r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$")


def validate_ref(value: str, option: str) -> str:
    """An image reference Docker accepts for a tag, else bad_input naming the option."""
    if not value or len(value) > 255 or not _REF_RE.match(value):
        raise BadInputError(f"{option} {value!r} is not a Docker image name (name[:tag], lower-case, e.g. nnrun:{__version__})")
    return value


def load_lock(path: Path = LOCK) -> tuple[Lock, str]:
    """The lock this package carries and its digest; a missing or broken lock is infra (a broken install)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InfraError(f"the image lock {path} is missing ({err.strerror or err}): this nnrun is installed incompletely",
                         hint="reinstall nnrun (pip install --force-reinstall nnrun)") from None
    try:
        lock = parse_lock(data.decode())
    except (LockError, UnicodeDecodeError) as err:
        raise InfraError(f"the image lock {path} does not parse: {err}") from None
    return lock, digest_bytes(data)


def build_args(lock: Lock, base_image: str, lock_digest: str, version: str = __version__) -> dict[str, str]:
    """The Dockerfile's build arguments: the label values come from the lock, never from a second list of pins."""
    torch, nnunet = lock.version_of("torch"), lock.version_of("nnunetv2")
    if not torch or not nnunet:
        raise InfraError("the image lock pins no torch or no nnunetv2")
    return {"BASE_IMAGE": base_image, "NNRUN_VERSION": version, "TORCH_VERSION": torch,
            "NNUNETV2_VERSION": nnunet, "LOCK_DIGEST": lock_digest}


def expected_labels(args: Mapping[str, str]) -> dict[str, str]:
    """The io.nnrun.* labels an image built with these build arguments carries."""
    return {"io.nnrun.version": args["NNRUN_VERSION"], "io.nnrun.nnunetv2-version": args["NNUNETV2_VERSION"],
            "io.nnrun.torch-version": args["TORCH_VERSION"], LABEL_LOCK_DIGEST: args["LOCK_DIGEST"],
            "io.nnrun.base-image": args["BASE_IMAGE"]}


def package_files(package_root: Path) -> list[str]:
    """The files of the nnrun package to put in the image, relative to its parent (``runner/...``), sorted.

    Byte-code and caches stay out (the image compiles its own); everything
    else of the package is the image's ``/opt/nnrun/runner``.
    """
    out = []
    for path in sorted(package_root.rglob("*")):
        rel = path.relative_to(package_root.parent)
        if "__pycache__" in rel.parts or path.suffix in (".pyc", ".pyo") or not path.is_file():
            continue
        out.append(rel.as_posix())
    return out


def context_layout(package_root: Path, files: Iterable[str], wheels: Iterable[Path]) -> dict[str, Path]:
    """Where each file of the build context comes from: ``{path in the context: source file}``."""
    layout: dict[str, Path] = {rel: package_root.parent / rel for rel in files}
    for wheel in wheels:
        layout[f"wheels/{wheel.name}"] = wheel
    if DOCKERFILE_IN_CONTEXT not in layout:
        raise InfraError(f"the package has no {DOCKERFILE_IN_CONTEXT}: this nnrun is installed incompletely")
    return layout


def assemble_context(dest: Path, layout: Mapping[str, Path]) -> None:
    """Lay the context out under ``dest``: hard links where possible (same file system), copies otherwise."""
    for rel, source in sorted(layout.items()):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)


def debian_mirror(sources: Iterable[str]) -> str | None:
    """The Debian mirror of this machine's apt sources (one-line ``deb URL ...`` or deb822 ``URIs:``), not security."""
    for text in sources:
        for line in text.splitlines():
            parts = line.split()
            if len(parts) < 2 or parts[0] not in ("deb", "URIs:"):
                continue
            for url in parts[1:]:
                if url.startswith("[") or "=" in url:       # deb [arch=amd64 signed-by=...] URL
                    continue
                if "security" in url:
                    break
                if re.match(r"^(https?|ftp|file)://", url) and url.rstrip("/").endswith("debian"):
                    return url
                break
    return None


def read_apt_sources(root: Path = Path("/etc/apt")) -> list[str]:
    files = [root / "sources.list", *sorted((root / "sources.list.d").glob("*"))]
    texts = []
    for f in files:
        try:
            texts.append(f.read_text(errors="replace"))
        except OSError:
            continue
    return texts


# --------------------------------------------------------------------------
# The build


@dataclass
class BuildResult:
    tag: str
    image_id: str
    labels: dict[str, str]
    lock_digest: str
    base_image: str
    base_source: str               # present / pulled / local / debootstrap
    wheels: int
    timings_s: dict[str, float] = field(default_factory=dict)
    duration_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"tag": self.tag, "image_id": self.image_id, "labels": self.labels, "lock_digest": self.lock_digest,
                "base_image": self.base_image, "base_source": self.base_source, "wheels": self.wheels,
                "timings_s": {k: round(v, 2) for k, v in self.timings_s.items()},
                "duration_s": round(self.duration_s, 2)}


@dataclass
class BuildRequest:
    tag: str
    base_image: str = DEFAULT_BASE
    cache: Path | None = None
    pip_python: str | None = None
    no_cache: bool = False


def _rootfs_complete(rootfs: Path) -> bool:
    return (rootfs / "bin" / "sh").exists() and (rootfs / ".complete").is_file()


def _debootstrap_problem() -> str | None:
    if shutil.which("debootstrap") is None:
        return "debootstrap is not installed"
    if os.geteuid() != 0:
        return "debootstrap needs root"
    if debian_mirror(read_apt_sources()) is None:
        return "no Debian mirror is in /etc/apt's sources for debootstrap"
    return None


def ensure_base(engine: Any, base: str, cache: Path, progress: Progress) -> tuple[str, str]:
    """The base image to build from and how it was had: ``present``, ``pulled``, ``local`` or ``debootstrap``."""
    if engine.has_image(base):
        return base, "present"
    progress(f"pulling {base}")
    try:
        engine.pull_image(base, timeout_s=PULL_TIMEOUT_S)
        return base, "pulled"
    except InfraError as err:
        pull_error = err.message
    if base != DEFAULT_BASE:
        raise InfraError(f"the base image {base} is neither here nor pullable ({pull_error})",
                         hint=f"pull or build it first, or leave --base-image at its default ({DEFAULT_BASE})")
    progress(f"{base} cannot be pulled here: using a local Debian base ({LOCAL_BASE})")
    if engine.has_image(LOCAL_BASE):
        return LOCAL_BASE, "local"
    rootfs = cache / f"rootfs-{DEBIAN_SUITE}"
    if not _rootfs_complete(rootfs):
        problem = _debootstrap_problem()
        if problem:
            raise InfraError(f"the base image {base} cannot be pulled ({pull_error}) and {problem} to make a local "
                             "Debian base", hint=DEBOOTSTRAP_HINT)
        mirror = debian_mirror(read_apt_sources())
        log = cache / "debootstrap.log"
        progress(f"debootstrap --variant=minbase {DEBIAN_SUITE} from this machine's apt mirror (about 25 s; log: {log})")
        shutil.rmtree(rootfs, ignore_errors=True)
        with open(log, "w") as out:
            code = subprocess.run(["debootstrap", "--variant=minbase", DEBIAN_SUITE, str(rootfs), str(mirror)],
                                  stdout=out, stderr=subprocess.STDOUT).returncode
        if code != 0:
            raise InfraError(f"debootstrap failed (exit {code}): see {log}")
        (rootfs / ".complete").touch()
    progress(f"importing {rootfs} as {LOCAL_BASE}")
    with tempfile.TemporaryDirectory(prefix="nnrun-rootfs-", dir=cache) as tmp:
        tar = Path(tmp) / "rootfs.tar"
        proc = subprocess.run(["tar", "-C", str(rootfs), "--exclude=./.complete", "-cf", str(tar), "."],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise InfraError(f"tar of {rootfs} failed: {' '.join(proc.stderr.split())[-300:]}")
        engine.import_image(tar, LOCAL_BASE)
    return LOCAL_BASE, "debootstrap"


def build(engine: Any, request: BuildRequest, progress: Progress, build_output: Progress | None = None) -> BuildResult:
    """Build the image; every failure is an NnrunError (infra or bad_input)."""
    started = time.monotonic()
    timings: dict[str, float] = {}
    tag = validate_ref(request.tag, "--tag")
    base = validate_ref(request.base_image, "--base-image")
    cache = Path(request.cache) if request.cache else default_cache()

    t = time.monotonic()
    info = engine.info()
    progress(f"{info.name} {info.server_version} at {info.base_url}")
    lock, digest = load_lock()
    progress(f"lock: {LOCK} ({len(lock.requirements)} packages, {digest[:19]}...)")
    timings["engine"] = time.monotonic() - t

    t = time.monotonic()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BadInputError(f"cannot create the cache folder {cache}: {err.strerror or err}",
                            hint="pass --cache DIR with a folder you may write") from None
    wheels = ensure_wheelhouse(lock, cache / "wheels", request.pip_python, progress)
    progress(f"wheelhouse: {len(wheels)} wheels of the lock in {cache / 'wheels'}")
    timings["wheelhouse"] = time.monotonic() - t

    t = time.monotonic()
    base_used, base_source = ensure_base(engine, base, cache, progress)
    progress(f"base image: {base_used} ({base_source})")
    timings["base"] = time.monotonic() - t

    args = build_args(lock, base_used, digest)
    package_root = Path(runner.__file__).resolve().parent
    layout = context_layout(package_root, package_files(package_root), wheels.values())
    context = Path(tempfile.mkdtemp(prefix="context.", dir=cache))
    try:
        t = time.monotonic()
        assemble_context(context, layout)
        if (context / DOCKERFILE_IN_CONTEXT).read_bytes() != DOCKERFILE.read_bytes():
            raise InfraError("the build context's Dockerfile is not this package's")
        timings["context"] = time.monotonic() - t
        t = time.monotonic()
        progress(f"building {tag} from {base_used} (context {context}: {len(wheels)} wheels + the runner package)")
        image = engine.build_image(context, DOCKERFILE_IN_CONTEXT, tag, args, {}, build_output or progress,
                                   nocache=request.no_cache)
        timings["build"] = time.monotonic() - t
    finally:
        shutil.rmtree(context, ignore_errors=True)
    want = expected_labels(args)
    wrong = {k: (image.labels.get(k), v) for k, v in want.items() if image.labels.get(k) != v}
    if wrong:
        raise InfraError(f"the built image {tag} has labels other than the recipe's: "
                         + ", ".join(f"{k}={got!r} (expected {exp!r})" for k, (got, exp) in wrong.items()))
    return BuildResult(tag=tag, image_id=image.image_id, labels=dict(image.labels), lock_digest=digest,
                       base_image=base_used, base_source=base_source, wheels=len(wheels), timings_s=timings,
                       duration_s=time.monotonic() - started)


def render_result(result: BuildResult) -> str:
    short = result.image_id.split(":", 1)[-1][:12]
    return (f"built {result.tag} ({short}) from {result.base_image} ({result.base_source}) in {result.duration_s:.1f} s\n"
            f"  lock:     {result.lock_digest} ({result.wheels} packages, hashes required)\n"
            f"  versions: nnrun {result.labels.get('io.nnrun.version')}, "
            f"nnunetv2 {result.labels.get('io.nnrun.nnunetv2-version')}, "
            f"torch {result.labels.get('io.nnrun.torch-version')}\n"
            f"  time:     " + ", ".join(f"{k} {v:.1f} s" for k, v in result.timings_s.items()))
