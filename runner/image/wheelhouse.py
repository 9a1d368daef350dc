"""The host-side wheelhouse the image installs from, and the making of the lock.

pip inside ``docker build`` cannot be trusted to reach an index (no TLS trust,
no registry), so the host's pip fetches the lock's files into a wheelhouse
folder and the image installs them with ``--no-index --require-hashes``.

* :func:`ensure_wheelhouse` makes sure the wheelhouse holds, for every package
  of the lock, a wheel whose sha256 is the lock's: files already there are
  kept (hashes are cached in ``.sha256.json``), missing ones are fetched with
  ``pip download --no-deps --require-hashes`` for the image's Python and
  platform (whatever Python the host runs), and a package whose index has only
  an sdist is built into a wheel reproducibly (``SOURCE_DATE_EPOCH``, the
  lock's setuptools, no build isolation), which must hash to the lock's.
* :func:`make_lock` resolves ``requirements.in`` with the host's pip (a Python
  of the image's version) and writes the lock from the exact files the
  wheelhouse then holds (``scripts/lock-image.sh``).

Standard library only: ``python3 -m runner.image.wheelhouse fill|lock`` runs
under any Python that has pip (the repository's shell scripts use it).
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from runner.errors import BadInputError, InfraError, NnrunError
from runner.image import LOCK, REQUIREMENTS_IN
from runner.image.lock import (
    Lock,
    LockedRequirement,
    canonical_name,
    format_lock,
    parse_dist_filename,
    parse_lock,
    platform_tags,
    requirements_text,
    select_files,
    target_pip_args,
    wheel_fits,
)

Progress = Callable[[str], None]
HASH_CACHE = ".sha256.json"
# A fixed date for the wheels nnrun builds from sdists (zip needs >= 1980): the same bytes on every host.
SOURCE_DATE_EPOCH = 315532800
# pip's output lines worth a progress line.
_PIP_PROGRESS = ("Collecting ", "Downloading ", "Saved ", "File was already downloaded", "Processing ", "Building ",
                 "Created wheel", "Successfully ")


def _quiet(_line: str) -> None:
    pass


def default_cache() -> Path:
    """``$NNRUN_CACHE``, else /var/cache/nnrun as root, else ``$XDG_CACHE_HOME/nnrun`` (``~/.cache/nnrun``)."""
    if os.environ.get("NNRUN_CACHE"):
        return Path(os.environ["NNRUN_CACHE"])
    if os.geteuid() == 0:
        return Path("/var/cache/nnrun")
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nnrun"


def pip_python(explicit: str | None = None) -> str:
    """The Python whose pip fetches wheels: ``explicit``, else nnrun's own when it has pip, else python3 on PATH."""
    if explicit:
        return explicit
    import importlib.util
    if importlib.util.find_spec("pip") is not None:
        return sys.executable
    found = shutil.which("python3")
    if found:
        return found
    raise InfraError("no Python with pip to fetch the image's wheels",
                     hint="install pip (e.g. `apt-get install python3-pip`) or pass --pip-python PATH")


# --------------------------------------------------------------------------
# File hashes (cached by size and modification time)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every wheel and sdist in ``directory`` (re-hashed only when size or mtime changed)."""
    cache_path = directory / HASH_CACHE
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    out: dict[str, str] = {}
    fresh: dict[str, list] = {}
    changed = False
    for path in sorted(directory.iterdir()):
        if not path.is_file() or parse_dist_filename(path.name) is None:
            continue
        st = path.stat()
        key = [st.st_size, st.st_mtime_ns]
        entry = cache.get(path.name)
        if isinstance(entry, list) and len(entry) == 3 and entry[:2] == key:
            digest = entry[2]
        else:
            digest, changed = sha256_file(path), True
        out[path.name] = digest
        fresh[path.name] = [*key, digest]
    if changed or set(fresh) != set(cache):
        tmp = cache_path.with_name(f"{HASH_CACHE}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(fresh, indent=0, sort_keys=True))
            os.replace(tmp, cache_path)
        except OSError:
            pass                       # a read-only wheelhouse still works, it just hashes again
    return out


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One filler of a wheelhouse at a time (two builds of different tags may run at once)."""
    with open(directory / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------
# pip


def _run_pip(cmd: Sequence[str], progress: Progress, what: str, env: dict[str, str] | None = None) -> None:
    """Run a pip command; forward its progress lines; on failure raise InfraError with pip's last lines."""
    try:
        proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **(env or {})})
    except OSError as err:
        raise InfraError(f"cannot run {cmd[0]}: {err.strerror or err}") from None
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if not line:
            continue
        tail = (tail + [line])[-12:]
        if line.lstrip().startswith(_PIP_PROGRESS):
            progress("pip: " + " ".join(line.split())[:160])
    code = proc.wait()
    if code != 0:
        errors = [t for t in tail if "ERROR" in t or "error" in t] or tail[-3:]
        raise InfraError(f"{what} failed (pip exit {code}): {' | '.join(' '.join(e.split()) for e in errors)[-600:]}",
                         hint="check the host's pip can reach its index (pip config list), then retry")


def download(python: str, requirements: Sequence[LockedRequirement], dest: Path, target_args: Sequence[str],
             progress: Progress) -> None:
    """``pip download --no-deps --require-hashes`` of these packages, for the image's Python and platform."""
    if not requirements:
        return
    with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="nnrun-lock-", delete=False) as f:
        f.write(requirements_text(requirements))
    try:
        _run_pip([python, "-m", "pip", "download", "--no-deps", "--require-hashes", "--progress-bar", "off",
                  "-d", str(dest), "-r", f.name, *target_args], progress,
                 f"fetching {len(requirements)} package(s) of the lock")
    finally:
        os.unlink(f.name)


def build_wheel_from_sdist(python: str, sdist: Path, wheels: Path, setuptools: LockedRequirement,
                           epoch: int, progress: Progress) -> Path:
    """Build ``sdist`` into a wheel reproducibly; return the wheel's path (in a temporary folder the caller moves)."""
    progress(f"building a wheel from {sdist.name} (the index has no wheel; setuptools {setuptools.version}, "
             f"SOURCE_DATE_EPOCH={epoch})")
    tmp = Path(tempfile.mkdtemp(prefix="nnrun-sdist-", dir=wheels))
    venv = tmp / "venv"
    try:
        proc = subprocess.run([python, "-m", "venv", str(venv)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise InfraError(f"cannot make a virtualenv to build {sdist.name}: {' '.join(proc.stderr.split())[-300:]}",
                             hint="install the venv module (e.g. `apt-get install python3-venv`)")
        vpy = str(venv / "bin" / "python")
        reqs = tmp / "setuptools.txt"
        reqs.write_text(requirements_text([setuptools]))
        _run_pip([vpy, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels), "--require-hashes",
                  "-r", str(reqs)], progress, f"installing setuptools {setuptools.version} to build {sdist.name}")
        out = tmp / "out"
        _run_pip([vpy, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out),
                  str(sdist)], progress, f"building a wheel from {sdist.name}",
                 env={"SOURCE_DATE_EPOCH": str(epoch), "PYTHONHASHSEED": "0"})
        built = sorted(out.glob("*.whl"))
        if len(built) != 1:
            raise InfraError(f"building {sdist.name} gave {len(built)} wheels, expected one")
        final = tmp / built[0].name
        built[0].rename(final)
        return final
    finally:
        shutil.rmtree(venv, ignore_errors=True)
        shutil.rmtree(tmp / "out", ignore_errors=True)


def _setuptools_for_builds(lock: Lock) -> tuple[LockedRequirement, int]:
    recipe = lock.sdist_build()
    setuptools = lock.get("setuptools")
    if setuptools is None or ("setuptools" in recipe and recipe["setuptools"] != setuptools.version):
        raise InfraError("the lock has sdist-only packages but does not pin the setuptools that builds them",
                         hint="the lock is incomplete: make it again with the lock script of nnrun's source repository")
    return setuptools, int(recipe.get("source-date-epoch") or SOURCE_DATE_EPOCH)


def _fetch(lock: Lock, wheels: Path, python: str, progress: Progress, *, accept_built: bool) -> dict[str, str]:
    """Fill ``wheels`` for ``lock``; return ``{package: wheel file name}``.  With ``accept_built`` (making the lock)
    a wheel built from an sdist is taken whatever its hash; otherwise its hash must be one of the lock's."""
    selection = select_files(lock, file_hashes(wheels))
    if selection.missing:
        names = ", ".join(r.pin for r in selection.missing[:6]) + (" ..." if len(selection.missing) > 6 else "")
        progress(f"fetching {len(selection.missing)} of {len(lock.requirements)} packages with {python} -m pip: {names}")
        download(python, selection.missing, wheels, target_pip_args(lock), progress)
        selection = select_files(lock, file_hashes(wheels))
    if selection.missing:
        raise InfraError("pip fetched files whose hashes are not the lock's for: "
                         + ", ".join(r.pin for r in selection.missing))
    built: dict[str, str] = {}
    if selection.sdists:
        setuptools, epoch = _setuptools_for_builds(lock)
        if "setuptools" not in selection.wheels:
            raise InfraError("setuptools, needed to build sdists, is itself not a wheel in the wheelhouse")
        for name, sdist_name in sorted(selection.sdists.items()):
            req = lock.by_name()[name]
            wheel = build_wheel_from_sdist(python, wheels / sdist_name, wheels, setuptools, epoch, progress)
            try:
                digest = sha256_file(wheel)
                dist = parse_dist_filename(wheel.name)
                if dist is None or dist.name != name or dist.version != req.version:
                    raise InfraError(f"building {sdist_name} gave {wheel.name}, not {req.pin}")
                if not wheel_fits(wheel.name, lock.python_version or "", platform_tags(lock)):
                    raise InfraError(f"{wheel.name}, built from {sdist_name} on this host, does not fit the image's "
                                     f"Python {lock.python_version}: a package with compiled code needs a wheel "
                                     "on the index")
                if not accept_built and digest not in req.hashes:
                    raise InfraError(f"the wheel built from {sdist_name} (sha256 {digest[:16]}...) is not the one the "
                                     f"lock pins for {req.pin}: this host's build is not reproducible",
                                     hint="report it with this line; a wheelhouse from a host where the build "
                                          "matches can be copied into the cache")
                os.replace(wheel, wheels / wheel.name)
                built[name] = wheel.name
            finally:
                shutil.rmtree(wheel.parent, ignore_errors=True)
    if accept_built:
        return {**selection.wheels, **built}
    final = select_files(lock, file_hashes(wheels))
    if not final.complete:
        raise InfraError("the wheelhouse still lacks: " + ", ".join([r.pin for r in final.missing] + sorted(final.sdists)))
    return final.wheels


def ensure_wheelhouse(lock: Lock, wheels: Path, python: str | None = None, progress: Progress = _quiet) -> dict[str, Path]:
    """Every package of ``lock`` as a wheel in ``wheels`` whose sha256 is the lock's; ``{package: wheel path}``."""
    try:
        wheels.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BadInputError(f"cannot create the wheelhouse {wheels}: {err.strerror or err}",
                            hint="pass --cache DIR with a folder you may write") from None
    if not os.access(wheels, os.W_OK | os.X_OK):
        raise BadInputError(f"the wheelhouse {wheels} is not writable", hint="pass --cache DIR with a folder you may write")
    with _locked(wheels):
        chosen = _fetch(lock, wheels, pip_python(python), progress, accept_built=False)
    return {name: wheels / filename for name, filename in chosen.items()}


# --------------------------------------------------------------------------
# Making the lock


def resolve(python: str, requirements_in: Path, progress: Progress) -> list[dict]:
    """``pip install --dry-run --report``: the packages the host's pip picks, with the index's hash of each file."""
    with tempfile.TemporaryDirectory(prefix="nnrun-resolve-") as tmp:
        report = Path(tmp) / "report.json"
        progress(f"resolving {requirements_in.name} with {python} -m pip")
        _run_pip([python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
                  "-r", str(requirements_in)], progress, f"resolving {requirements_in}")
        data = json.loads(report.read_text())
    items = []
    for item in data.get("install", []):
        info = item.get("download_info") or {}
        url = str(info.get("url") or "")
        digest = ((info.get("archive_info") or {}).get("hashes") or {}).get("sha256")
        if not digest:
            raise InfraError(f"pip reported no sha256 for {url or item}: cannot lock it")
        meta = item.get("metadata") or {}
        items.append({"name": canonical_name(str(meta.get("name"))), "version": str(meta.get("version")),
                      "filename": urllib.parse.unquote(url.rsplit("/", 1)[-1]), "sha256": digest})
    return items


def make_lock(requirements_in: Path, wheels: Path, python: str | None = None, progress: Progress = _quiet) -> str:
    """Resolve ``requirements_in`` on this host (a Python of the image's version) and return the lock's text."""
    python = pip_python(python)
    probe = subprocess.run([python, "-c", "import platform, sys; print('%d.%d' % sys.version_info[:2], "
                            "platform.system(), platform.machine())"], capture_output=True, text=True)
    parts = probe.stdout.split()
    if probe.returncode != 0 or len(parts) != 3:
        raise InfraError(f"{python} does not run")
    version, system, machine = parts
    if (system, machine) != ("Linux", "x86_64"):
        raise BadInputError(f"lock on a Linux x86_64 host (this is {system} {machine}): the image is Linux x86_64")
    items = resolve(python, requirements_in, progress)
    names = {i["name"] for i in items}
    sdists = [i for i in items if getattr(parse_dist_filename(i["filename"]), "kind", None) == "sdist"]
    if sdists and "setuptools" not in names:
        raise BadInputError("sdist-only packages (" + ", ".join(i["name"] for i in sdists) + ") need setuptools in the "
                            f"lock to be built reproducibly: add setuptools to {requirements_in}")
    setuptools_version = next((i["version"] for i in items if i["name"] == "setuptools"), None)
    meta = {"python-version": version,
            "requirements-in": " ".join(_requirement_lines(requirements_in))}
    if sdists:
        meta["sdist-build"] = f"setuptools=={setuptools_version} source-date-epoch={SOURCE_DATE_EPOCH}"
    provisional = Lock(tuple(LockedRequirement(i["name"], i["version"], (i["sha256"],), i["filename"]) for i in items),
                       meta)
    wheels.mkdir(parents=True, exist_ok=True)
    with _locked(wheels):
        chosen = _fetch(provisional, wheels, python, progress, accept_built=True)
        hashes = file_hashes(wheels)
    locked = []
    for item in items:
        filename = chosen[item["name"]]
        if filename == item["filename"]:
            if hashes[filename] != item["sha256"]:
                raise InfraError(f"{filename} in {wheels} does not hash to the index's sha256")
            locked.append(LockedRequirement(item["name"], item["version"], (item["sha256"],), filename))
        else:           # built from the sdist: the wheel's hash first, then the sdist's
            locked.append(LockedRequirement(item["name"], item["version"], (hashes[filename], item["sha256"]),
                                            filename, item["filename"]))
    header = [
        "nnrun image lock: every Python package of the image, pinned to the sha256 of the exact file installed.",
        "Made by scripts/lock-image.sh from requirements.in (do not edit by hand); the image installs it with",
        "pip install --no-index --find-links /wheels --require-hashes -r requirements.lock.",
        "A package whose index has only an sdist is pinned to the wheel nnrun builds from it reproducibly",
        "(setuptools of this lock, SOURCE_DATE_EPOCH below, no build isolation) and to the sdist: 'built from'.",
    ]
    return format_lock(locked, meta, header)


def _requirement_lines(path: Path) -> list[str]:
    return [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()
            if line.split("#", 1)[0].strip()]


# --------------------------------------------------------------------------
# python3 -m runner.image.wheelhouse fill|lock


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m runner.image.wheelhouse",
                                     description="Fill the image's wheelhouse from the lock, or make the lock.")
    sub = parser.add_subparsers(dest="command", required=True)
    fill = sub.add_parser("fill", help="make WHEELS hold every wheel of the lock (hash-checked)")
    make = sub.add_parser("lock", help="resolve requirements.in on this host and write the lock")
    for p in (fill, make):
        p.add_argument("--wheels", type=Path, default=None, help="the wheelhouse [default: CACHE/wheels]")
        p.add_argument("--python", default=None, help="the Python whose pip fetches [default: this one]")
    fill.add_argument("--lock", type=Path, default=LOCK)
    make.add_argument("--requirements", type=Path, default=REQUIREMENTS_IN)
    make.add_argument("--output", type=Path, default=LOCK)
    args = parser.parse_args(argv)
    wheels = args.wheels or default_cache() / "wheels"

    def progress(line: str) -> None:
        print(f"wheelhouse: {line}", file=sys.stderr, flush=True)

    try:
        if args.command == "fill":
            chosen = ensure_wheelhouse(parse_lock(args.lock.read_text()), wheels, args.python, progress)
            progress(f"{len(chosen)} wheels of {args.lock.name} in {wheels}")
        else:
            text = make_lock(args.requirements, wheels, args.python, progress)
            tmp = args.output.with_name(args.output.name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, args.output)
            lock = parse_lock(text)
            progress(f"wrote {args.output} ({len(lock.requirements)} packages, python {lock.python_version}, "
                     f"{platform.python_version()} resolved)")
    except (NnrunError, ValueError, OSError) as err:
        message = err.one_line() if isinstance(err, NnrunError) else f"{type(err).__name__}: {err}"
        print(f"wheelhouse: error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
