"""The image's lock file: parse, write, compare.  Pure (no pip, no Docker, no network).

The lock is a pip requirements file in ``--require-hashes`` form, one package
per line::

    torch==2.13.0+cpu --hash=sha256:...  # torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl

The comment names the file the hash is of (the wheel the image installs).  A
package whose index has only an sdist carries two hashes: the wheel built
from it reproducibly (see ``#: sdist-build``) and the sdist itself, and its
comment says ``built from <sdist>``.  Lines ``#: key: value`` carry what the
wheelhouse code needs to fetch the files for the image's Python:

* ``#: python-version: 3.11``: the image's Python (its wheels are for it);
* ``#: sdist-build: setuptools==V source-date-epoch=N``: how sdist-only
  packages are turned into the wheels whose hashes the lock holds;
* ``#: requirements-in: ...``: the top-level pins the lock was resolved from.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

HASH_RE = re.compile(r"^[0-9a-f]{64}$")
_NAME_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9][A-Za-z0-9.+!_-]*)$")
_COMMENT_RE = re.compile(r"(^|\s+)#.*$")
SDIST_SUFFIXES = (".tar.gz", ".zip", ".tar.bz2", ".tgz")


class LockError(ValueError):
    """The lock file does not parse (a broken package or a hand edit)."""


def canonical_name(name: str) -> str:
    """PEP 503 normalised project name: ``SimpleITK`` -> ``simpleitk``, ``acvl_utils`` -> ``acvl-utils``."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class LockedRequirement:
    name: str                       # canonical
    version: str
    hashes: tuple[str, ...]         # sha256 hex digests, the wheel's first
    filename: str | None = None     # the wheel the lock's first hash is of
    sdist: str | None = None        # the sdist the wheel was built from (index without a wheel)

    @property
    def pin(self) -> str:
        return f"{self.name}=={self.version}"

    def line(self) -> str:
        text = self.pin + "".join(f" --hash=sha256:{h}" for h in self.hashes)
        if self.filename:
            text += f"  # {self.filename}" + (f" built from {self.sdist}" if self.sdist else "")
        return text


@dataclass(frozen=True)
class Lock:
    requirements: tuple[LockedRequirement, ...]
    meta: Mapping[str, str] = field(default_factory=dict)

    def by_name(self) -> dict[str, LockedRequirement]:
        return {r.name: r for r in self.requirements}

    def get(self, name: str) -> LockedRequirement | None:
        return self.by_name().get(canonical_name(name))

    @property
    def python_version(self) -> str | None:
        return self.meta.get("python-version")

    def version_of(self, name: str) -> str | None:
        req = self.get(name)
        return req.version if req else None

    def sdist_build(self) -> dict[str, str]:
        """``{"setuptools": "84.2.1", "source-date-epoch": "315532800"}`` from ``#: sdist-build``."""
        out: dict[str, str] = {}
        for token in self.meta.get("sdist-build", "").split():
            if "==" in token:
                name, _, version = token.partition("==")
                out[canonical_name(name)] = version
            elif "=" in token:
                key, _, value = token.partition("=")
                out[key] = value
        return out

    def pins(self) -> dict[str, str]:
        return {r.name: r.version for r in self.requirements}


def parse_lock(text: str) -> Lock:
    """Parse a lock; every requirement must be ``name==version`` with at least one sha256 hash."""
    requirements: list[LockedRequirement] = []
    meta: dict[str, str] = {}
    seen: set[str] = set()
    # pip joins a line ending in a backslash with the next one.
    logical = re.sub(r"\\\n", " ", text).splitlines()
    for number, raw in enumerate(logical, 1):
        stripped = raw.strip()
        if stripped.startswith("#:"):
            key, sep, value = stripped[2:].partition(":")
            if sep:
                meta[key.strip()] = value.strip()
            continue
        comment = ""
        match = _COMMENT_RE.search(raw)
        if match:
            comment = match.group(0).strip()[1:].strip()
            raw = raw[:match.start()]
        tokens = raw.split()
        if not tokens:
            continue
        pin = _NAME_RE.match(tokens[0])
        if not pin:
            raise LockError(f"line {number}: expected name==version, got {tokens[0]!r}")
        hashes = []
        for token in tokens[1:]:
            if not token.startswith("--hash=sha256:"):
                raise LockError(f"line {number}: unexpected {token!r} (only --hash=sha256:... may follow a pin)")
            digest = token.split(":", 1)[1].lower()
            if not HASH_RE.match(digest):
                raise LockError(f"line {number}: {token!r} is not a sha256 hash")
            hashes.append(digest)
        if not hashes:
            raise LockError(f"line {number}: {tokens[0]} has no --hash (the lock is for pip --require-hashes)")
        name = canonical_name(pin.group(1))
        if name in seen:
            raise LockError(f"line {number}: {name} is pinned twice")
        seen.add(name)
        filename, sdist = _parse_comment(comment)
        requirements.append(LockedRequirement(name, pin.group(2), tuple(hashes), filename, sdist))
    if not requirements:
        raise LockError("the lock pins no package")
    return Lock(tuple(requirements), meta)


def _parse_comment(comment: str) -> tuple[str | None, str | None]:
    parts = comment.split()
    if not parts or not parse_dist_filename(parts[0]):
        return None, None
    sdist = parts[3] if len(parts) >= 4 and parts[1:3] == ["built", "from"] else None
    return parts[0], sdist


def format_lock(requirements: Iterable[LockedRequirement], meta: Mapping[str, str], header: Iterable[str] = ()) -> str:
    """The lock's text: ``header`` lines as comments, the ``#:`` lines, then one line per package (sorted)."""
    lines = [f"# {h}".rstrip() for h in header]
    lines += [f"#: {k}: {v}" for k, v in meta.items()]
    lines += [r.line() for r in sorted(requirements, key=lambda r: r.name)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# Distribution file names


@dataclass(frozen=True)
class DistFile:
    name: str                 # canonical
    version: str
    kind: str                 # "wheel" or "sdist"
    tags: frozenset[tuple[str, str, str]] = frozenset()   # (python, abi, platform), wheels only


def parse_dist_filename(filename: str) -> DistFile | None:
    """Name, version and tags of a wheel or sdist file name (``None`` for anything else)."""
    if filename.endswith(".whl"):
        parts = filename[:-4].split("-")
        if len(parts) not in (5, 6):
            return None
        name, version = parts[0], parts[1]
        pys, abis, plats = (p.split(".") for p in parts[-3:])
        tags = frozenset((p, a, pl) for p in pys for a in abis for pl in plats)
        return DistFile(canonical_name(name), version, "wheel", tags)
    for suffix in SDIST_SUFFIXES:
        if filename.endswith(suffix):
            stem = filename[: -len(suffix)]
            name, sep, version = stem.rpartition("-")
            if not sep or not name or not version:
                return None
            return DistFile(canonical_name(name), version, "sdist")
    return None


def platform_tags(lock: Lock) -> list[str]:
    """Every platform tag of the lock's wheels except ``any`` (pip download's ``--platform`` values)."""
    found: set[str] = set()
    for req in lock.requirements:
        dist = parse_dist_filename(req.filename or "")
        if dist is not None:
            found.update(t[2] for t in dist.tags if t[2] != "any")
    return sorted(found)


def target_pip_args(lock: Lock) -> list[str]:
    """pip download options that fetch the files of the image's Python and platform, whatever the host runs."""
    version = lock.python_version
    if not version or not re.match(r"^3\.\d+$", version):
        raise LockError("the lock has no '#: python-version: 3.N' line")
    args = ["--python-version", version, "--implementation", "cp", "--abi", "cp" + version.replace(".", "")]
    for tag in platform_tags(lock):
        args += ["--platform", tag]
    return args


def wheel_fits(filename: str, python_version: str, platforms: Iterable[str]) -> bool:
    """Can the image's Python (``3.11``, on one of ``platforms``) install this wheel?"""
    dist = parse_dist_filename(filename)
    if dist is None or dist.kind != "wheel":
        return False
    major, minor = python_version.split(".")
    cp = f"cp{major}{minor}"
    pythons = {f"py{major}", f"py{major}{minor}", cp}
    plats = set(platforms) | {"any"}
    for py, abi, plat in dist.tags:
        if plat not in plats:
            continue
        if abi == "none" and py in pythons:
            return True
        if abi == cp and py == cp:
            return True
        if abi == "abi3" and py.startswith(f"cp{major}") and int(py[len(f'cp{major}'):] or 0) <= int(minor):
            return True
    return False


# --------------------------------------------------------------------------
# Which files of a wheelhouse the lock wants


@dataclass
class Selection:
    wheels: dict[str, str] = field(default_factory=dict)      # name -> wheel file name
    sdists: dict[str, str] = field(default_factory=dict)      # name -> sdist file name (to build a wheel from)
    missing: list[LockedRequirement] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.missing and not self.sdists


def select_files(lock: Lock, file_hashes: Mapping[str, str]) -> Selection:
    """For each locked package, a wheel of the wheelhouse whose sha256 the lock lists; else such an sdist; else missing.

    ``file_hashes`` maps file names of the wheelhouse to their sha256.  Only a
    file whose hash is the lock's counts (a file of the same name with another
    hash is ignored: the lock decides, not the name).
    """
    by_hash: dict[str, list[str]] = {}
    for filename, digest in file_hashes.items():
        by_hash.setdefault(digest, []).append(filename)
    selection = Selection()
    for req in lock.requirements:
        files = [f for h in req.hashes for f in sorted(by_hash.get(h, ()))]
        dists = [(f, parse_dist_filename(f)) for f in files]
        wheels = [f for f, d in dists if d is not None and d.kind == "wheel" and d.name == req.name]
        sdists = [f for f, d in dists if d is not None and d.kind == "sdist" and d.name == req.name]
        if wheels:
            selection.wheels[req.name] = wheels[0]
        elif sdists:
            selection.sdists[req.name] = sdists[0]
        else:
            selection.missing.append(req)
    return selection


def requirements_text(requirements: Iterable[LockedRequirement]) -> str:
    """A ``--require-hashes`` requirements file of these packages (no comments)."""
    return "".join(f"{r.pin}" + "".join(f" --hash=sha256:{h}" for h in r.hashes) + "\n" for r in requirements)


# --------------------------------------------------------------------------
# pip freeze against the lock


@dataclass(frozen=True)
class FreezeDiff:
    missing: tuple[str, ...]        # pinned in the lock, not installed
    extra: tuple[str, ...]          # installed, not in the lock
    different: tuple[str, ...]      # "name: lock X, installed Y"

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.different)

    def summary(self) -> str:
        parts = []
        if self.missing:
            parts.append("not installed: " + ", ".join(self.missing))
        if self.extra:
            parts.append("not in the lock: " + ", ".join(self.extra))
        if self.different:
            parts.append("other versions: " + "; ".join(self.different))
        return "; ".join(parts) or "the installed packages are the lock's"


def parse_freeze(text: str) -> dict[str, str]:
    """``pip freeze --all`` output as ``{canonical name: version}`` (``name @ url`` lines get the url as version)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "==" in line:
            name, _, version = line.partition("==")
        elif " @ " in line:
            name, _, version = line.partition(" @ ")
        else:
            name, version = line, "?"
        out[canonical_name(name.strip())] = version.strip()
    return out


def compare_freeze(lock: Lock, installed: Mapping[str, str]) -> FreezeDiff:
    pins = lock.pins()
    installed = {canonical_name(k): v for k, v in installed.items()}
    missing = tuple(sorted(n for n in pins if n not in installed))
    extra = tuple(sorted(f"{n}=={installed[n]}" for n in installed if n not in pins))
    different = tuple(sorted(f"{n}: lock {pins[n]}, installed {installed[n]}"
                             for n in pins if n in installed and installed[n] != pins[n]))
    return FreezeDiff(missing, extra, different)
