"""runner.run.locks across real processes.

``flock`` locks belong to open file descriptions, so a conflict is only real
between processes: every "first run" here is a separate Python process that
takes its locks, prints HELD, and keeps them until the test closes its stdin
(or kills it).  The "second run" is the test process itself.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runner.errors import BadInputError, Outcome, exit_code_for
from runner.run import locks
from runner.run.locks import HeldLocks, LockScope, acquire, owner_info, scope_for_run

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}

HOLDER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from runner.errors import BadInputError
    from runner.run.locks import LockScope, acquire, owner_info

    dataset, scope_json, run_id = sys.argv[1:4]
    s = json.loads(scope_json)
    scope = LockScope(s["global_steps"], tuple(s["configurations"]), tuple(s["shard"]) if s["shard"] else None)
    try:
        held = acquire(Path(dataset), scope, owner_info(run_id, argv=["nnrun", "preprocess", "-d", "501"]))
    except BadInputError as exc:
        print("REFUSED " + exc.one_line(), flush=True)
        sys.exit(2)
    print("HELD", flush=True)
    sys.stdin.read()          # hold until the test closes stdin
    held.release()
    held.release()            # idempotent
    print("RELEASED", flush=True)
""")

class Holder:
    def __init__(self, proc: subprocess.Popen, run_id: str) -> None:
        self.proc = proc
        self.run_id = run_id
        self.first_line = proc.stdout.readline().strip()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def release(self) -> str:
        """Let the holder release its locks and end; its remaining output."""
        out, _ = self.proc.communicate(timeout=20)      # closes its stdin first
        return out


@pytest.fixture
def dataset(tmp_path) -> Path:
    path = tmp_path / "preprocessed" / "Dataset501_Demo"
    path.mkdir(parents=True)
    return path


@pytest.fixture
def start(dataset, tmp_path):
    """start(scope, run_id) -> a Holder whose process holds the locks of ``scope`` (or was refused)."""
    procs: list[subprocess.Popen] = []
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)

    def _start(scope: LockScope, run_id: str = "20261125-193017-dc8f9e") -> Holder:
        scope_json = json.dumps({"global_steps": scope.global_steps,
                                 "configurations": list(scope.configurations), "shard": scope.shard})
        proc = subprocess.Popen([sys.executable, str(script), str(dataset), scope_json, run_id],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=REPO, env=ENV)
        procs.append(proc)
        holder = Holder(proc, run_id)
        if not holder.first_line:
            proc.kill()
            raise AssertionError(f"holder died: {proc.stderr.read()}")
        return holder

    yield _start
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            proc.communicate()


def me(run_id: str = "20261125-200000-aaaaaa") -> dict:
    return owner_info(run_id, argv=["nnrun", "preprocess", "-d", "501"])


FULL = LockScope(True, ("2d", "3d_fullres", "3d_lowres"))          # a whole plan_and_preprocess
NO_PP = LockScope(True, ())                                         # --no_pp: fingerprint + plans only
WHOLE_3D = LockScope(False, ("3d_fullres",))                        # whole configuration, no global steps
WHOLE_2D = LockScope(False, ("2d",))


def shard(k: int, n: int, *configs: str) -> LockScope:
    return LockScope(False, configs or ("3d_fullres",), (k, n))


# (first run, second run, second refused?)
MATRIX = [
    pytest.param(FULL, FULL, True, id="whole-dataset twice"),
    pytest.param(FULL, NO_PP, True, id="full vs no_pp (global vs global)"),
    pytest.param(NO_PP, LockScope(True, ("2d",)), True, id="global steps vs global steps, other configs"),
    pytest.param(FULL, WHOLE_2D, True, id="global vs a config run (it reads the plans)"),
    pytest.param(WHOLE_2D, NO_PP, True, id="config run vs a later global run"),
    pytest.param(NO_PP, shard(1, 2), True, id="global vs shard"),
    pytest.param(shard(1, 2), FULL, True, id="shard vs global"),
    pytest.param(WHOLE_3D, WHOLE_3D, True, id="same whole config twice"),
    pytest.param(WHOLE_3D, WHOLE_2D, False, id="different configs, no global steps"),
    pytest.param(WHOLE_3D, shard(1, 2), True, id="whole config vs shard"),
    pytest.param(shard(1, 2), WHOLE_3D, True, id="shard vs whole config"),
    pytest.param(shard(1, 2), shard(2, 2), False, id="two shards side by side"),
    pytest.param(shard(1, 2), shard(1, 2), True, id="same shard twice"),
    pytest.param(shard(1, 2), shard(1, 3), True, id="shards with different N"),
    pytest.param(shard(1, 2), shard(1, 2, "2d"), False, id="same shard of different configs"),
    pytest.param(shard(1, 2, "2d", "3d_fullres"), shard(2, 2, "3d_fullres"), False,
                 id="multi-config shard vs other shard"),
    pytest.param(shard(1, 2), WHOLE_2D, False, id="shard vs whole other config"),
]


@pytest.mark.parametrize("first, second, refused", MATRIX)
def test_conflict_matrix(start, dataset, first, second, refused):
    holder = start(first)
    assert holder.first_line == "HELD"
    if refused:
        with pytest.raises(BadInputError) as err:
            acquire(dataset, second, me())
        msg = err.value.one_line()
        assert "\n" not in msg
        assert msg.startswith("Dataset501_Demo is being written by another nnrun run (")
        assert f"run {holder.run_id}" in msg and f"pid {holder.pid} on host " in msg
        assert msg.endswith("wait for it to finish, or stop it")
        assert err.value.outcome is Outcome.BAD_INPUT and exit_code_for(err.value.outcome) == 2
    else:
        with acquire(dataset, second, me()) as held:
            assert held.paths
    assert "RELEASED" in holder.release()
    # once the first run is gone, the second proceeds
    with acquire(dataset, second, me()):
        pass


def test_second_whole_dataset_run_is_refused_with_the_first_runs_identity(start, dataset):
    holder = start(FULL, run_id="20261125-193017-dc8f9e")
    with pytest.raises(BadInputError) as err:
        acquire(dataset, FULL, me())
    msg = str(err.value)
    assert msg.startswith("Dataset501_Demo is being written by another nnrun run "
                          f"(run 20261125-193017-dc8f9e, pid {holder.pid} on host ")
    assert "started " in msg and "it holds fingerprint and plans" in msg
    assert len(msg.splitlines()) == 1


def test_refused_run_in_a_separate_process_exits_refused(start):
    first = start(FULL, run_id="first-run")
    second = start(FULL, run_id="second-run")
    assert first.first_line == "HELD"
    assert second.first_line.startswith("REFUSED Dataset501_Demo is being written by another nnrun run "
                                        f"(run first-run, pid {first.pid} ")
    second.proc.communicate(timeout=20)
    assert second.proc.returncode == 2


def test_shard_holders_are_named_when_a_whole_config_run_is_refused(start, dataset):
    a = start(shard(1, 3), run_id="shard-one")
    b = start(shard(2, 3), run_id="shard-two")
    assert (a.first_line, b.first_line) == ("HELD", "HELD")
    with pytest.raises(BadInputError) as err:
        acquire(dataset, WHOLE_3D, me())
    msg = str(err.value)
    assert "run shard-one" in msg and "it holds configuration 3d_fullres shard 1 of 3" in msg
    assert ") and 1 more: wait for it to finish" in msg
    with pytest.raises(BadInputError) as err:               # a global run names the readers too
        acquire(dataset, NO_PP, me())
    assert "run shard-one" in str(err.value)


def test_different_shard_count_message(start, dataset):
    start(shard(2, 2), run_id="two-shards")
    with pytest.raises(BadInputError) as err:
        acquire(dataset, shard(1, 3), me())
    msg = str(err.value)
    assert "run two-shards" in msg and "same shard count (this run: shard 1 of 3)" in msg
    assert "\n" not in msg


def test_released_locks_can_be_retaken(dataset):
    held = acquire(dataset, FULL, me())
    assert not held.released
    held.release()
    held.release()                                            # idempotent
    assert held.released
    with acquire(dataset, FULL, me()) as again:
        assert {p.name for p in again.paths} == {"global.lock", "config-2d.lock", "config-3d_fullres.lock",
                                                 "config-3d_lowres.lock"}
    assert again.released
    acquire(dataset, FULL, me()).release()


def test_released_by_another_process_can_be_retaken(start, dataset):
    holder = start(FULL)
    with pytest.raises(BadInputError):
        acquire(dataset, FULL, me())
    assert "RELEASED" in holder.release()
    acquire(dataset, FULL, me()).release()


def test_sigkilled_holder_leaves_no_stale_lock(start, dataset):
    holder = start(FULL)
    with pytest.raises(BadInputError):
        acquire(dataset, FULL, me())
    os.kill(holder.pid, signal.SIGKILL)
    holder.proc.communicate(timeout=20)
    with acquire(dataset, FULL, me()):
        pass
    # the killed run's owner info is still in the file, but nobody reads it while the lock is free


def test_nothing_stays_held_after_a_refusal(start, dataset):
    start(shard(1, 2, "3d_fullres"))
    # the second run would get global (shared) and config-2d before failing on config-3d_fullres
    with pytest.raises(BadInputError):
        acquire(dataset, LockScope(False, ("2d", "3d_fullres")), me())
    # if it had kept config-2d or global, these would fail
    acquire(dataset, WHOLE_2D, me()).release()


def test_owner_info_round_trips(dataset):
    owner = owner_info("20261125-193017-dc8f9e", argv=["nnrun", "preprocess", "-d", "501", "--mem", "6g"])
    with acquire(dataset, FULL, owner) as held:
        written = json.loads((dataset / ".nnrun" / "locks" / "global.lock").read_text())
        assert written == {**owner, "holds": "fingerprint and plans"}
        assert written["pid"] == os.getpid() and written["host"]
        config = json.loads((dataset / ".nnrun" / "locks" / "config-3d_fullres.lock").read_text())
        assert config["holds"] == "configuration 3d_fullres" and config["run_id"] == owner["run_id"]
        assert all(p.parent == dataset / ".nnrun" / "locks" for p in held.paths)


def test_owner_info_overwrites_a_previous_longer_owner(dataset):
    long = me("x" * 500)
    acquire(dataset, NO_PP, long).release()
    with acquire(dataset, NO_PP, me("short")):
        assert json.loads((dataset / ".nnrun" / "locks" / "global.lock").read_text())["run_id"] == "short"


def test_message_is_one_line_whatever_the_owner_holds(dataset, tmp_path):
    # the holder is another process whose owner record has line breaks and no valid time
    script = tmp_path / "weird.py"
    script.write_text(textwrap.dedent("""
        import sys
        from pathlib import Path
        from runner.run.locks import LockScope, acquire
        held = acquire(Path(sys.argv[1]), LockScope(True, ()),
                       {"run_id": "a\\nb", "host": "h\\r\\nx", "started": "not a time", "argv": ["x\\ny"]})
        print("HELD", flush=True)
        sys.stdin.read()
    """))
    proc = subprocess.Popen([sys.executable, str(script), str(dataset)], cwd=REPO, env=ENV, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == "HELD"
        with pytest.raises(BadInputError) as err:
            acquire(dataset, NO_PP, me())
        msg = str(err.value)
        assert "\n" not in msg and "\r" not in msg
        assert "run a b" in msg and "started not a time" in msg
    finally:
        proc.kill()
        proc.communicate()


def test_unknown_owner_names_the_lock_file(dataset):
    locks_dir = dataset / ".nnrun" / "locks"
    locks_dir.mkdir(parents=True)
    path = locks_dir / "global.lock"
    path.write_text("")
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys
        fd = os.open({str(path)!r}, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("HELD", flush=True)
        sys.stdin.read()
    """)], text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == "HELD"
        with pytest.raises(BadInputError) as err:
            acquire(dataset, NO_PP, me())
        assert f"(owner unknown: {path})" in str(err.value)
    finally:
        proc.kill()
        proc.communicate()


def test_unwritable_lock_folder(dataset):
    (dataset / ".nnrun").write_text("not a folder")       # works as root too, unlike chmod
    with pytest.raises(BadInputError) as err:
        acquire(dataset, FULL, me())
    msg = err.value.one_line()
    assert "cannot create nnrun's lock folder" in msg and str(dataset / ".nnrun" / "locks") in msg
    assert "\n" not in msg


def test_lock_file_that_cannot_be_opened(dataset):
    (dataset / ".nnrun" / "locks" / "global.lock").mkdir(parents=True)   # a folder where the file goes
    with pytest.raises(BadInputError) as err:
        acquire(dataset, FULL, me())
    assert "cannot open nnrun's lock file" in str(err.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_dataset_folder(dataset):
    dataset.chmod(0o555)
    try:
        with pytest.raises(BadInputError, match="cannot create nnrun's lock folder"):
            acquire(dataset, FULL, me())
    finally:
        dataset.chmod(0o755)


def test_stuck_mutex_holder_times_out(dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(locks, "MUTEX_TIMEOUT_S", 0.3)
    locks_dir = dataset / ".nnrun" / "locks"
    locks_dir.mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, json, os, sys
        fd = os.open({str(locks_dir / "acquire.lock")!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, json.dumps({{"run_id": "stuck-run", "pid": os.getpid(), "host": "h"}}).encode())
        print("HELD", flush=True)
        sys.stdin.read()
    """)], text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == "HELD"
        with pytest.raises(BadInputError) as err:
            acquire(dataset, FULL, me())
        assert "run stuck-run" in str(err.value) and "is it stopped?" in str(err.value)
    finally:
        proc.kill()
        proc.communicate()
    acquire(dataset, FULL, me()).release()


def test_locks_are_not_inherited_by_subprocesses(dataset):
    with acquire(dataset, FULL, me()):
        child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                 stdin=subprocess.PIPE, close_fds=False)
    try:
        # the child still runs, but the parent released: the locks are free
        acquire(dataset, FULL, me()).release()
    finally:
        child.kill()
        child.wait()


def test_lock_order_is_sorted_and_fixed():
    names = [r.filename for r in locks._plan(LockScope(False, ("3d_lowres", "2d"), (1, 2)))]
    assert names[1:] == sorted(names[1:])
    assert names == ["global.lock", "config-2d.lock", "config-2d.shard-1-of-2.lock", "config-3d_lowres.lock",
                     "config-3d_lowres.shard-1-of-2.lock"]


def test_odd_configuration_names_get_safe_files(dataset):
    scope = LockScope(False, ("../evil", "a.shard-1-of-2"))
    with acquire(dataset, scope, me()) as held:
        assert all(p.parent == dataset / ".nnrun" / "locks" for p in held.paths)
        assert all("/" not in p.name and ".." not in p.name for p in held.paths)


def test_empty_scope_takes_nothing(dataset):
    with acquire(dataset, LockScope(False, ()), me()) as held:
        assert held.paths == []


def test_scope_for_run():
    assert scope_for_run(["3d_fullres", "2d"], no_pp=False) == LockScope(True, ("2d", "3d_fullres"))
    assert scope_for_run(["3d_fullres"], no_pp=True) == LockScope(True, ())
    assert scope_for_run(["3d_fullres"], no_pp=False, shard=(2, 4)) == LockScope(False, ("3d_fullres",), (2, 4))
    with pytest.raises(ValueError):
        scope_for_run(["3d_fullres"], no_pp=True, shard=(1, 2))


@pytest.mark.parametrize("bad", [(0, 2), (3, 2), (1, 0), ("1", 2)])
def test_bad_shards_are_rejected(bad):
    with pytest.raises(ValueError):
        LockScope(False, ("3d_fullres",), bad)


def test_heldlocks_repr(dataset):
    held = acquire(dataset, WHOLE_2D, me())
    assert isinstance(held, HeldLocks) and "config-2d.lock" in repr(held)
    held.release()
    assert "released" in repr(held)
