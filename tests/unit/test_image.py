"""The image recipe (runner/image/): the one Dockerfile, the lock, the wheelhouse logic, `nnrun image build` with fakes."""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest

from runner import __version__
from runner.cli import app as cli
from runner.doctor import OK, WARN, evaluate_image
from runner.engines.base import EngineInfo, ImageInfo
from runner.errors import BadInputError, InfraError
from runner.image import (
    DOCKERFILE,
    LABEL_LOCK_DIGEST,
    LOCK,
    REQUIREMENTS_IN,
    build_command_for,
    digest_bytes,
    lock_digest,
    wheelhouse,
)
from runner.image import build as image_build
from runner.image.lock import (
    Lock,
    LockedRequirement,
    LockError,
    canonical_name,
    compare_freeze,
    format_lock,
    parse_dist_filename,
    parse_freeze,
    parse_lock,
    platform_tags,
    select_files,
    target_pip_args,
    wheel_fits,
)
from runner.run.manifest import lock_record

REPO = Path(__file__).resolve().parents[2]
H1, H2, H3 = "a" * 64, "b" * 64, "c" * 64


# --------------------------------------------------------------------------
# One recipe


def test_the_top_level_dockerfile_is_the_packaged_one():
    """The repository's Dockerfile and the one `nnrun image build` uses (package data) are the same bytes."""
    assert (REPO / "Dockerfile").read_bytes() == DOCKERFILE.read_bytes(), (
        "Dockerfile and runner/image/Dockerfile differ: edit runner/image/Dockerfile and copy it to ./Dockerfile")


def test_the_dockerfile_installs_exactly_the_lock_with_hashes_required():
    text = DOCKERFILE.read_text()
    install = re.search(r'pip" install([^&]*)&&', text, re.S)
    assert install, text
    options = install.group(1).split()
    for option in ("--no-index", "--require-hashes", "/tmp/requirements.lock"):
        assert option in options, option
    assert "COPY runner/image/requirements.lock /tmp/requirements.lock" in text
    assert "venv --without-pip" in text           # no pip but the lock's
    assert 'io.nnrun.lock-digest="${LOCK_DIGEST}"' in text


def test_every_build_arg_is_declared_in_the_dockerfile():
    lock, digest = image_build.load_lock()
    args = image_build.build_args(lock, "python:3.11-slim", digest)
    declared = set(re.findall(r"^ARG (\w+)", DOCKERFILE.read_text(), re.M))
    assert set(args) <= declared


def test_the_package_data_ships_the_recipe():
    text = (REPO / "pyproject.toml").read_text()
    assert '"runner.image" = ["Dockerfile", "requirements.in", "requirements.lock"]' in text


# --------------------------------------------------------------------------
# The lock in the repository


def test_the_lock_pins_every_package_with_a_hash_and_the_cpu_torch():
    lock = parse_lock(LOCK.read_text())
    assert lock.python_version == "3.11"
    assert all(r.hashes for r in lock.requirements)
    assert lock.version_of("torch") == "2.13.0+cpu"
    assert lock.version_of("nnunetv2") == "2.8.1"
    assert lock.get("psutil") is not None and lock.get("pip") is not None
    names = {r.name for r in lock.requirements}
    assert not [n for n in names if n.startswith("nvidia-") or n in ("triton", "cuda-python")], "a CUDA build crept in"
    # Each wheel named in a comment fits the image's Python.
    platforms = platform_tags(lock)
    for req in lock.requirements:
        assert req.filename and wheel_fits(req.filename, "3.11", platforms), req


def test_the_lock_follows_requirements_in():
    lock = parse_lock(LOCK.read_text())
    for line in REQUIREMENTS_IN.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, version = line.partition("==")
        req = lock.get(name)
        assert req is not None, line
        if version:
            assert req.version.split("+")[0] == version, (line, req.version)
    assert lock.meta["requirements-in"] == "torch==2.13.0 nnunetv2==2.8.1 psutil pip"


def test_sdist_only_packages_carry_the_built_wheel_and_the_sdist():
    lock = parse_lock(LOCK.read_text())
    built = [r for r in lock.requirements if r.sdist]
    assert built, "expected acvl-utils (no wheel on the index) to be built from its sdist"
    for req in built:
        assert len(req.hashes) == 2 and parse_dist_filename(req.sdist).kind == "sdist"
    assert lock.sdist_build()["setuptools"] == lock.version_of("setuptools")
    assert lock.sdist_build()["source-date-epoch"] == str(wheelhouse.SOURCE_DATE_EPOCH)


def test_the_lock_digest_is_the_sha256_of_the_file():
    assert lock_digest() == "sha256:" + hashlib.sha256(LOCK.read_bytes()).hexdigest()
    assert lock_digest(Path("/nonexistent/lock")) is None


def test_stack_sh_reads_the_pins_of_requirements_in():
    out = subprocess.run(["bash", "-c", f'REPO={REPO}; . {REPO}/scripts/stack.sh; '
                                        'echo "$TORCH_VERSION|$NNUNETV2_VERSION|$REQUIREMENTS|$LOCK"'],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == f"2.13.0|2.8.1|torch==2.13.0 nnunetv2==2.8.1 psutil|{REPO}/runner/image/requirements.lock"


# --------------------------------------------------------------------------
# Lock parsing and writing


def test_parse_and_format_round_trip():
    reqs = [LockedRequirement("b-pkg", "1.0", (H1,), "b_pkg-1.0-py3-none-any.whl"),
            LockedRequirement("a-pkg", "2.0+cpu", (H2, H3), "a_pkg-2.0+cpu-py3-none-any.whl", "a_pkg-2.0.tar.gz")]
    text = format_lock(reqs, {"python-version": "3.11"}, ["header"])
    assert text.splitlines()[0] == "# header" and "#: python-version: 3.11" in text
    lock = parse_lock(text)
    assert [r.name for r in lock.requirements] == ["a-pkg", "b-pkg"]           # sorted
    assert lock.get("A_Pkg") == sorted(reqs, key=lambda r: r.name)[0]
    assert parse_lock(text) == lock and format_lock(lock.requirements, lock.meta, ["header"]) == text


def test_parse_accepts_pips_continuation_lines():
    lock = parse_lock(f"foo==1 \\\n    --hash=sha256:{H1} \\\n    --hash=sha256:{H2}\n")
    assert lock.requirements[0].hashes == (H1, H2)


@pytest.mark.parametrize("text,words", [
    ("foo==1\n", "no --hash"),
    (f"foo>=1 --hash=sha256:{H1}\n", "name==version"),
    (f"foo==1 --hash=sha256:{H1}\nFoo==2 --hash=sha256:{H2}\n", "pinned twice"),
    ("foo==1 --hash=sha256:xyz\n", "not a sha256"),
    (f"foo==1 --hash=md5:{H1}\n", "unexpected"),
    ("# only comments\n", "no package"),
])
def test_parse_refuses_what_pip_would_not_take_as_a_lock(text, words):
    with pytest.raises(LockError, match=words):
        parse_lock(text)


def test_canonical_names():
    assert canonical_name("SimpleITK") == "simpleitk"
    assert canonical_name("acvl_utils") == "acvl-utils"
    assert canonical_name("zope.interface") == "zope-interface"


def test_dist_filenames():
    wheel = parse_dist_filename("charset_normalizer-3.5.3-cp311-cp311-manylinux1_x86_64.manylinux_2_28_x86_64.whl")
    assert wheel.name == "charset-normalizer" and wheel.version == "3.5.3" and wheel.kind == "wheel"
    assert ("cp311", "cp311", "manylinux_2_28_x86_64") in wheel.tags and len(wheel.tags) == 2
    sdist = parse_dist_filename("acvl_utils-0.2.6.tar.gz")
    assert (sdist.name, sdist.version, sdist.kind) == ("acvl-utils", "0.2.6", "sdist")
    assert parse_dist_filename("README.md") is None and parse_dist_filename(".sha256.json") is None


@pytest.mark.parametrize("filename,fits", [
    ("six-1.17.0-py2.py3-none-any.whl", True),
    ("torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl", True),
    ("psutil-7.2.2-cp36-abi3-manylinux_2_28_x86_64.whl", True),
    ("x-1-cp312-cp312-manylinux_2_28_x86_64.whl", False),         # another Python
    ("x-1-cp311-cp311-macosx_11_0_arm64.whl", False),             # another platform
    ("x-1-cp312-abi3-manylinux_2_28_x86_64.whl", False),          # abi3 of a newer Python
    ("x-1.tar.gz", False),
])
def test_wheel_fits_the_images_python(filename, fits):
    assert wheel_fits(filename, "3.11", ["manylinux_2_28_x86_64"]) is fits


def test_target_pip_args_fetch_for_the_images_python_whatever_the_host():
    args = target_pip_args(parse_lock(LOCK.read_text()))
    assert args[:6] == ["--python-version", "3.11", "--implementation", "cp", "--abi", "cp311"]
    platforms = args[7::2]
    assert "manylinux_2_28_x86_64" in platforms and "manylinux2014_x86_64" in platforms and "any" not in platforms
    with pytest.raises(LockError):
        target_pip_args(Lock((LockedRequirement("x", "1", (H1,)),), {}))


def test_select_files_goes_by_hash_not_by_name():
    lock = Lock((LockedRequirement("a", "1", (H1,)), LockedRequirement("b", "2", (H2, H3)),
                 LockedRequirement("c", "3", (H3,))), {})
    files = {"a-1-py3-none-any.whl": "f" * 64,          # right name, wrong hash: ignored
             "b-2.tar.gz": H3,                            # the sdist of b
             "c-3-py3-none-any.whl": H3}
    sel = select_files(lock, files)
    assert [r.name for r in sel.missing] == ["a"] and sel.sdists == {"b": "b-2.tar.gz"}
    assert sel.wheels == {"c": "c-3-py3-none-any.whl"} and not sel.complete
    files["a-1-py3-none-any.whl"] = H1
    files["b-2-py3-none-any.whl"] = H2
    sel = select_files(lock, files)
    assert sel.complete and sel.wheels["b"] == "b-2-py3-none-any.whl"


def test_freeze_against_the_lock():
    lock = Lock((LockedRequirement("torch", "2.13.0+cpu", (H1,)), LockedRequirement("simpleitk", "2.5.7", (H2,))), {})
    assert compare_freeze(lock, parse_freeze("torch==2.13.0+cpu\nSimpleITK==2.5.7\n")).ok
    diff = compare_freeze(lock, parse_freeze("torch==2.13.0\nrequests==2.0\nfoo @ file:///x\n"))
    assert diff.missing == ("simpleitk",) and diff.extra == ("foo==file:///x", "requests==2.0")
    assert diff.different == ("torch: lock 2.13.0+cpu, installed 2.13.0",)
    assert "not installed: simpleitk" in diff.summary() and not diff.ok


# --------------------------------------------------------------------------
# The wheelhouse (pip replaced by fakes)


def _lock_for(tmp_path, files: dict[str, bytes], sdist: tuple[str, bytes] | None = None) -> Lock:
    reqs = []
    for name, data in files.items():
        dist = parse_dist_filename(name)
        reqs.append(LockedRequirement(dist.name, dist.version, (hashlib.sha256(data).hexdigest(),), name))
    return Lock(tuple(reqs), {"python-version": "3.11"})


def test_a_complete_wheelhouse_needs_no_pip(tmp_path, monkeypatch):
    files = {"aa-1-py3-none-any.whl": b"one", "bb-2-cp311-cp311-manylinux_2_28_x86_64.whl": b"two"}
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name, data in files.items():
        (wheels / name).write_bytes(data)
    (wheels / "old-0-py3-none-any.whl").write_bytes(b"not in the lock")
    monkeypatch.setattr(wheelhouse, "download", lambda *a, **k: pytest.fail("pip called for a complete wheelhouse"))
    chosen = wheelhouse.ensure_wheelhouse(_lock_for(tmp_path, files), wheels, python="python3")
    assert {p.name for p in chosen.values()} == set(files)
    cache = json.loads((wheels / wheelhouse.HASH_CACHE).read_text())
    assert cache["aa-1-py3-none-any.whl"][2] == hashlib.sha256(b"one").hexdigest()


def test_missing_wheels_are_fetched_for_the_images_python(tmp_path, monkeypatch):
    files = {"aa-1-py3-none-any.whl": b"one", "bb-2-cp311-cp311-manylinux_2_28_x86_64.whl": b"two"}
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "aa-1-py3-none-any.whl").write_bytes(b"one")
    (wheels / "bb-2-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"a stale file of another hash")
    calls = []

    def fake_download(python, requirements, dest, target_args, progress):
        calls.append(([r.pin for r in requirements], list(target_args)))
        (dest / "bb-2-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"two")

    monkeypatch.setattr(wheelhouse, "download", fake_download)
    chosen = wheelhouse.ensure_wheelhouse(_lock_for(tmp_path, files), wheels, python="python3")
    assert calls == [(["bb==2"], ["--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
                                  "--platform", "manylinux_2_28_x86_64"])]
    assert set(chosen) == {"aa", "bb"}


def test_a_fetch_that_does_not_match_the_lock_is_infra(tmp_path, monkeypatch):
    files = {"aa-1-py3-none-any.whl": b"one"}
    wheels = tmp_path / "wheels"
    monkeypatch.setattr(wheelhouse, "download", lambda python, reqs, dest, args, progress:
                        (dest / "aa-1-py3-none-any.whl").write_bytes(b"tampered"))
    with pytest.raises(InfraError, match="not the lock's for: aa==1"):
        wheelhouse.ensure_wheelhouse(_lock_for(tmp_path, files), wheels, python="python3")


def test_an_sdist_is_built_and_its_wheel_must_be_the_locks(tmp_path, monkeypatch):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    setuptools = b"setuptools wheel"
    (wheels / "setuptools-80-py3-none-any.whl").write_bytes(setuptools)
    (wheels / "cc-3.tar.gz").write_bytes(b"sdist")
    built = b"reproducible wheel"
    lock = Lock((LockedRequirement("setuptools", "80", (hashlib.sha256(setuptools).hexdigest(),)),
                 LockedRequirement("cc", "3", (hashlib.sha256(built).hexdigest(), hashlib.sha256(b"sdist").hexdigest()),
                                   "cc-3-py3-none-any.whl", "cc-3.tar.gz")),
                {"python-version": "3.11", "sdist-build": "setuptools==80 source-date-epoch=315532800"})
    seen = []

    def fake_build(python, sdist, wheels_dir, setuptools_req, epoch, progress, data=built):
        seen.append((sdist.name, setuptools_req.pin, epoch))
        out = Path(wheels_dir) / "tmp-build"
        out.mkdir()
        (out / "cc-3-py3-none-any.whl").write_bytes(data)
        return out / "cc-3-py3-none-any.whl"

    monkeypatch.setattr(wheelhouse, "build_wheel_from_sdist", fake_build)
    chosen = wheelhouse.ensure_wheelhouse(lock, wheels, python="python3")
    assert seen == [("cc-3.tar.gz", "setuptools==80", 315532800)]
    assert chosen["cc"].read_bytes() == built and not (wheels / "tmp-build").exists()
    # A build that is not reproducible here is refused, not installed.
    (wheels / "cc-3-py3-none-any.whl").unlink()
    monkeypatch.setattr(wheelhouse, "build_wheel_from_sdist",
                        lambda *a, **k: fake_build(*a, **k, data=b"other bytes"))
    with pytest.raises(InfraError, match="not reproducible"):
        wheelhouse.ensure_wheelhouse(lock, wheels, python="python3")


def test_an_unwritable_cache_is_bad_input(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(BadInputError, match="cannot create the wheelhouse") as caught:
        wheelhouse.ensure_wheelhouse(_lock_for(tmp_path, {"aa-1-py3-none-any.whl": b"1"}), blocker / "wheels", "python3")
    assert "--cache DIR" in caught.value.one_line()


def test_default_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("NNRUN_CACHE", str(tmp_path))
    assert wheelhouse.default_cache() == tmp_path
    monkeypatch.delenv("NNRUN_CACHE")
    monkeypatch.setattr(wheelhouse.os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert wheelhouse.default_cache() == tmp_path / "xdg" / "nnrun"


# --------------------------------------------------------------------------
# The build: pure parts


@pytest.mark.parametrize("ref", ["nnrun:0.1.0", "nnrun-wheeltest:0.1.0", "localhost:5000/team/nnrun:v1", "nnrun"])
def test_valid_refs(ref):
    assert image_build.validate_ref(ref, "--tag") == ref


@pytest.mark.parametrize("ref", ["", "NNRUN:1", "nnrun:", "nnrun:bad tag", "-nnrun", "nnrun:" + "x" * 200])
def test_invalid_refs_are_bad_input(ref):
    with pytest.raises(BadInputError, match="--tag"):
        image_build.validate_ref(ref, "--tag")


def test_build_args_and_labels_come_from_the_lock():
    lock, digest = image_build.load_lock()
    args = image_build.build_args(lock, "nnrun-base:bookworm", digest)
    assert args == {"BASE_IMAGE": "nnrun-base:bookworm", "NNRUN_VERSION": __version__, "TORCH_VERSION": "2.13.0+cpu",
                    "NNUNETV2_VERSION": "2.8.1", "LOCK_DIGEST": lock_digest()}
    labels = image_build.expected_labels(args)
    assert labels[LABEL_LOCK_DIGEST] == lock_digest() and labels["io.nnrun.version"] == __version__


def test_a_broken_or_missing_lock_is_infra(tmp_path):
    with pytest.raises(InfraError, match="missing"):
        image_build.load_lock(tmp_path / "none")
    (tmp_path / "bad").write_text("foo\n")
    with pytest.raises(InfraError, match="does not parse"):
        image_build.load_lock(tmp_path / "bad")


def test_package_files_are_the_installed_package_without_byte_code(tmp_path):
    root = tmp_path / "runner"
    (root / "image").mkdir(parents=True)
    (root / "__pycache__").mkdir()
    (root / "__init__.py").write_text("")
    (root / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"")
    (root / "stray.pyc").write_bytes(b"")
    (root / "image" / "Dockerfile").write_text("FROM x\n")
    assert image_build.package_files(root) == ["runner/__init__.py", "runner/image/Dockerfile"]
    real = image_build.package_files(Path(image_build.runner.__file__).resolve().parent)
    for needed in ("runner/image/Dockerfile", "runner/image/requirements.lock", "runner/incontainer/supervisor.py"):
        assert needed in real


def test_context_layout_and_assembly(tmp_path):
    root = tmp_path / "site" / "runner"
    (root / "image").mkdir(parents=True)
    (root / "image" / "Dockerfile").write_text("FROM x\n")
    wheel = tmp_path / "cache" / "wheels" / "aa-1-py3-none-any.whl"
    wheel.parent.mkdir(parents=True)
    wheel.write_bytes(b"w")
    layout = image_build.context_layout(root, ["runner/image/Dockerfile"], [wheel])
    assert layout == {"runner/image/Dockerfile": root / "image" / "Dockerfile", "wheels/aa-1-py3-none-any.whl": wheel}
    context = tmp_path / "cache" / "context"
    image_build.assemble_context(context, layout)
    assert (context / "wheels" / "aa-1-py3-none-any.whl").stat().st_ino == wheel.stat().st_ino     # a hard link
    assert (context / "runner" / "image" / "Dockerfile").read_text() == "FROM x\n"
    with pytest.raises(InfraError, match="incompletely"):
        image_build.context_layout(root, [], [wheel])


@pytest.mark.parametrize("sources,mirror", [
    (["deb http://mirror.example/debian bookworm main\ndeb http://mirror.example/debian-security bookworm-security main"],
     "http://mirror.example/debian"),
    (["deb [arch=amd64 signed-by=/k.gpg] https://m.example/debian/ bookworm main"], "https://m.example/debian/"),
    (["Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\n",
      "Types: deb\nURIs: http://deb.example/debian\nSuites: bookworm\n"], "http://deb.example/debian"),
    (["deb http://archive.example/ubuntu jammy main"], None),
    ([], None),
])
def test_debian_mirror_from_apt_sources(sources, mirror):
    assert image_build.debian_mirror(sources) == mirror


class FakeBuildEngine:
    """The engine calls `nnrun image build` makes."""

    def __init__(self, present=(), pullable=(), labels_override=None, info_exc=None):
        self.present, self.pullable = set(present), set(pullable)
        self.labels_override = labels_override or {}
        self.info_exc = info_exc
        self.calls: list = []

    def info(self):
        if self.info_exc:
            raise self.info_exc
        return EngineInfo("docker", "20.10.24", 24 << 30, 1, "cgroupfs", "6.1", "unix:///var/run/docker.sock")

    def has_image(self, ref):
        return ref in self.present

    def pull_image(self, ref, timeout_s=90):
        self.calls.append(("pull", ref))
        if ref not in self.pullable:
            raise InfraError("no registry")
        self.present.add(ref)

    def import_image(self, tar, ref):
        self.calls.append(("import", ref))
        self.present.add(ref)

    def build_image(self, context, dockerfile, tag, buildargs, labels, progress, nocache=False):
        context = Path(context)
        self.calls.append(("build", tag, dockerfile, dict(buildargs),
                           sorted(p.relative_to(context).as_posix() for p in context.rglob("*") if p.is_file())))
        progress("Step 1/2 : FROM x")
        labels = {**image_build.expected_labels(buildargs), **self.labels_override}
        return ImageInfo(ref=tag, image_id="sha256:" + "e" * 64, labels=labels, repo_digests=[])


def test_base_image_choice(tmp_path, monkeypatch):
    lines = []
    engine = FakeBuildEngine(present={"python:3.11-slim"})
    assert image_build.ensure_base(engine, "python:3.11-slim", tmp_path, lines.append) == ("python:3.11-slim", "present")
    engine = FakeBuildEngine(pullable={"python:3.11-slim"})
    assert image_build.ensure_base(engine, "python:3.11-slim", tmp_path, lines.append) == ("python:3.11-slim", "pulled")
    engine = FakeBuildEngine(present={"nnrun-base:bookworm"})
    assert image_build.ensure_base(engine, "python:3.11-slim", tmp_path, lines.append) == ("nnrun-base:bookworm", "local")
    with pytest.raises(InfraError, match="my/base:1 is neither here nor pullable"):
        image_build.ensure_base(FakeBuildEngine(), "my/base:1", tmp_path, lines.append)


def test_no_base_and_no_debootstrap_is_one_line_saying_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(image_build.shutil, "which", lambda name: None)
    with pytest.raises(InfraError) as caught:
        image_build.ensure_base(FakeBuildEngine(), "python:3.11-slim", tmp_path, lambda line: None)
    text = caught.value.one_line()
    assert "debootstrap is not installed" in text and "apt-get install debootstrap" in text and "--base-image" in text
    assert "\n" not in text


def test_a_complete_rootfs_is_imported_without_debootstrap(tmp_path, monkeypatch):
    rootfs = tmp_path / "rootfs-bookworm"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "bin" / "sh").write_text("")
    (rootfs / ".complete").write_text("")
    monkeypatch.setattr(image_build.shutil, "which", lambda name: pytest.fail("debootstrap looked for"))
    engine = FakeBuildEngine()
    assert image_build.ensure_base(engine, "python:3.11-slim", tmp_path, lambda line: None) == \
        ("nnrun-base:bookworm", "debootstrap")
    assert engine.calls[-1] == ("import", "nnrun-base:bookworm")


@pytest.fixture
def fake_wheels(tmp_path, monkeypatch):
    """ensure_wheelhouse replaced: two wheels in the cache."""
    wheels = tmp_path / "cache" / "wheels"
    wheels.mkdir(parents=True)
    paths = {}
    for name in ("aa-1-py3-none-any.whl", "bb-2-py3-none-any.whl"):
        (wheels / name).write_bytes(name.encode())
        paths[name.split("-")[0]] = wheels / name
    monkeypatch.setattr(image_build, "ensure_wheelhouse", lambda lock, where, python, progress: paths)
    return tmp_path / "cache"


def test_build_lays_out_the_context_and_checks_the_labels(fake_wheels):
    engine = FakeBuildEngine(present={"python:3.11-slim"})
    lines: list[str] = []
    result = image_build.build(engine, image_build.BuildRequest(tag="nnrun-test:1", cache=fake_wheels), lines.append)
    _, tag, dockerfile, args, files = engine.calls[-1]
    assert (tag, dockerfile) == ("nnrun-test:1", "runner/image/Dockerfile")
    assert args["LOCK_DIGEST"] == lock_digest() and args["BASE_IMAGE"] == "python:3.11-slim"
    assert "wheels/aa-1-py3-none-any.whl" in files and "runner/image/requirements.lock" in files
    assert "runner/incontainer/supervisor.py" in files and not [f for f in files if "__pycache__" in f]
    assert not list(fake_wheels.glob("context.*"))                     # the context is removed
    data = result.to_dict()
    assert data["lock_digest"] == lock_digest() and data["wheels"] == 2 and data["base_source"] == "present"
    assert set(data["timings_s"]) == {"engine", "wheelhouse", "base", "context", "build"}
    assert any(line.startswith("building nnrun-test:1") for line in lines)


def test_an_image_whose_labels_are_not_the_recipes_is_infra(fake_wheels):
    engine = FakeBuildEngine(present={"python:3.11-slim"}, labels_override={LABEL_LOCK_DIGEST: "sha256:other"})
    with pytest.raises(InfraError, match="lock-digest"):
        image_build.build(engine, image_build.BuildRequest(tag="nnrun-test:1", cache=fake_wheels), lambda line: None)


# --------------------------------------------------------------------------
# The command


def _run_cli(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_image_build_command_json(fake_wheels, monkeypatch, capsys):
    import runner.engines.docker as docker_engine
    engine = FakeBuildEngine(present={"python:3.11-slim"})
    monkeypatch.setattr(docker_engine, "engine_factory", lambda name: (lambda: engine))
    code, out, err = _run_cli(["image", "build", "--tag", "nnrun-test:1", "--cache", str(fake_wheels), "--json"], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert out.count("\n") == 1 and data["outcome"] == "ok" and data["tag"] == "nnrun-test:1"
    assert data["lock_digest"] == lock_digest()
    assert "nnrun image build: Step 1/2 : FROM x" in err and "built nnrun-test:1" in err


def test_image_build_daemon_down_is_infra(monkeypatch, capsys):
    import runner.engines.docker as docker_engine
    engine = FakeBuildEngine(info_exc=InfraError("Docker daemon not reachable at unix:///x.sock", hint="start it"))
    monkeypatch.setattr(docker_engine, "engine_factory", lambda name: (lambda: engine))
    code, out, err = _run_cli(["image", "build", "--json"], capsys)
    assert code == 6 and json.loads(out)["outcome"] == "infra"
    assert err.strip() == "nnrun: infra: Docker daemon not reachable at unix:///x.sock (start it)"


@pytest.mark.parametrize("argv", [["--tag", "Bad Tag"], ["--base-image", "UPPER:1"], ["--runtime", "lxc"], ["--bogus"]])
def test_image_build_bad_options_are_bad_input(argv, capsys):
    code, _, err = _run_cli(["image", "build", *argv], capsys)
    assert code == 2 and "bad_input" in err


# --------------------------------------------------------------------------
# doctor and the manifest


def _labels(**extra):
    return {"io.nnrun.version": __version__, "io.nnrun.nnunetv2-version": "2.8.1",
            "io.nnrun.torch-version": "2.13.0+cpu", **extra}


def test_doctor_image_lock_matches():
    check = evaluate_image("nnrun:x", "sha256:" + "1" * 64, _labels(**{LABEL_LOCK_DIGEST: lock_digest()}), lock_digest())
    assert check.status == OK and check.data["lock_matches"] is True and "lock sha256:" in check.detail


def test_doctor_warns_when_the_images_lock_is_not_this_nnruns():
    other = digest_bytes(b"another lock")
    check = evaluate_image(f"nnrun:{__version__}", "sha256:1", _labels(**{LABEL_LOCK_DIGEST: other}), lock_digest())
    assert check.status == WARN and "package lock" in check.detail and check.data["lock_matches"] is False
    assert "`nnrun image build`" in check.advice
    check = evaluate_image("nnrun:x", "sha256:1", _labels(), lock_digest())
    assert check.status == WARN and "no lock digest label" in check.detail
    assert "`nnrun image build --tag nnrun:x`" in check.advice


def test_build_command_for():
    assert build_command_for(f"nnrun:{__version__}") == "nnrun image build"
    assert build_command_for("mine:1", "podman") == "nnrun image build --tag mine:1 --runtime podman"


def test_manifest_lock_record():
    assert lock_record({LABEL_LOCK_DIGEST: lock_digest()}) == {
        "image_digest": lock_digest(), "nnrun_digest": lock_digest(), "matches": True}
    assert lock_record({}, host_digest="sha256:x") == {"image_digest": None, "nnrun_digest": "sha256:x",
                                                        "matches": False}


def test_the_recipe_names_no_index_or_registry_address():
    """Where packages come from is the host's pip and engine configuration, never an address in the recipe or docs."""
    root = Path(image_build.runner.__file__).resolve().parent
    for path in [*root.joinpath("image").iterdir(), REPO / "scripts" / "lock-image.sh", REPO / "docs" / "install.md"]:
        if path.is_file() and path.suffix != ".pyc":
            assert not re.search(r"(https?|ftp)://", path.read_text(errors="replace")), path
