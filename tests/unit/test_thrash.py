"""The thrashing watch (runner.incontainer.thrash), its cgroup counters, and how a thrashed run is
classified, worded and advised.  Pure: readings are made up here; tests/integration/test_thrash_real.py
thrashes a real cgroup."""
from __future__ import annotations

from pathlib import Path

import pytest

from runner.cgroup import parse_pressure, read_memory_counters
from runner.diagnosis.classify import classify
from runner.diagnosis.facts import gather_facts
from runner.diagnosis.wording import thrash_message
from runner.errors import CgroupReadError, Outcome
from runner.incontainer.thrash import Reading, ThrashWatch, near_cap
from runner.rundir import SupervisorStatus, Thrashing

MiB = 1 << 20
CAP = 1024 * MiB


def _feed(watch: ThrashWatch, seconds: float, *, usage=CAP, reread_rate=0.0, stall_share=None, step=0.05,
          t0=0.0, faults0=0, stall0=0):
    """Readings every ``step`` s for ``seconds``; returns (first verdict or None, its time)."""
    t, faults, stall = t0, faults0, stall0
    while t <= t0 + seconds + 1e-9:
        found = watch.observe(Reading(t, usage, CAP, int(faults),
                                      None if stall_share is None else int(stall)))
        if found is not None:
            return found, t
        t += step
        faults += reread_rate * step
        if stall_share is not None:
            stall += stall_share * step * 1e6
    return None, t


def test_steady_faults_at_the_cap_for_the_window_is_thrashing():
    watch = ThrashWatch(window_s=10)
    found, t = _feed(watch, 20, reread_rate=5000)
    assert watch.summary()["peak_reread_rate"] == pytest.approx(5000, rel=0.02)
    assert watch.summary()["longest_at_cap_s"] == pytest.approx(10, abs=0.2)
    assert found is not None and 9.9 <= t <= 10.2
    assert found.since == 0.0 and found.seconds == pytest.approx(10, abs=0.2)
    assert found.reread_rate == pytest.approx(5000, rel=0.02) and found.stall_share is None
    assert found.limit_bytes == CAP


def test_at_the_cap_without_faults_is_a_good_run_with_page_cache():
    assert _feed(ThrashWatch(window_s=10), 60, reread_rate=0)[0] is None
    assert _feed(ThrashWatch(window_s=10), 60, reread_rate=500)[0] is None     # below the rate


def test_faults_below_the_cap_are_not_thrashing():
    # Reading a dataset's mapped files while far from the cap is not thrashing.
    assert _feed(ThrashWatch(window_s=10), 60, usage=CAP // 2, reread_rate=5000)[0] is None


def test_a_burst_of_faults_in_one_half_of_the_window_is_not_enough():
    """A cold start maps libraries in at the cap for a few seconds: that burst must not end the run."""
    watch = ThrashWatch(window_s=10)
    found, t = _feed(watch, 4, reread_rate=20000)                  # 4 s burst
    assert found is None
    found, _ = _feed(watch, 30, reread_rate=0, t0=t, faults0=int(20000 * 4))
    assert found is None


def test_leaving_the_cap_starts_the_stretch_over():
    watch = ThrashWatch(window_s=10)
    found, t = _feed(watch, 8, reread_rate=5000)
    assert found is None
    watch.observe(Reading(t + 0.05, CAP // 2, CAP, int(5000 * 8)))          # one reading away from the cap
    found, t2 = _feed(watch, 20, reread_rate=5000, t0=t + 0.1, faults0=int(5000 * 8))
    assert found is not None and found.since == pytest.approx(t + 0.1) and t2 - (t + 0.1) >= 9.9


def test_v2_memory_stall_alone_is_thrashing():
    found, _ = _feed(ThrashWatch(window_s=10), 20, reread_rate=0, stall_share=0.6)
    assert found is not None and found.stall_share == pytest.approx(0.6, abs=0.01)
    assert _feed(ThrashWatch(window_s=10), 30, reread_rate=0, stall_share=0.05)[0] is None


def test_near_cap_needs_a_limit_and_usage():
    assert not near_cap(Reading(0, None, CAP, 0))
    assert not near_cap(Reading(0, CAP, None, 0))
    assert near_cap(Reading(0, CAP - 4 * MiB, CAP, 0))             # within the 8 MiB floor
    assert not near_cap(Reading(0, CAP - 64 * MiB, CAP, 0))


def test_counters_missing_or_reset_never_fire():
    watch = ThrashWatch(window_s=2)
    for i in range(100):
        assert watch.observe(Reading(i * 0.1, CAP, CAP, None)) is None
    watch = ThrashWatch(window_s=2)
    for i in range(100):   # a counter that goes back (a new cgroup) is no evidence
        assert watch.observe(Reading(i * 0.1, CAP, CAP, 10_000 - i * 50)) is None


def test_parse_pressure():
    text = ("some avg10=1.50 avg60=0.30 avg300=0.00 total=123456\n"
            "full avg10=0.80 avg60=0.10 avg300=0.00 total=65432\n")
    assert parse_pressure(text) == {"some": 123456, "full": 65432}
    with pytest.raises(CgroupReadError):
        parse_pressure("partial avg10=0 total=1\n")
    with pytest.raises(CgroupReadError):
        parse_pressure("full avg10=0.00 total=-3\n")


def _write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def test_readers_give_refaults_major_faults_and_pressure(tmp_path):
    v1 = _write(tmp_path / "v1", {"memory.usage_in_bytes": "100\n", "memory.limit_in_bytes": "200\n",
                                  "memory.stat": "rss 50\ncache 50\npgmajfault 7\nworkingset_refault_file 2\n"
                                                 "total_rss 50\ntotal_pgmajfault 9\ntotal_workingset_refault_file 5\n"
                                                 "total_workingset_refault_anon 1\n",
                                  "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n"})
    c = read_memory_counters(v1)
    assert c.major_faults == 9 and c.refaults == 6 and c.pressure_full_us is None    # total_: nested too
    v2 = _write(tmp_path / "v2", {"memory.current": "100\n", "memory.max": "200\n",
                                  "memory.stat": "anon 50\nfile 50\npgmajfault 11\nworkingset_refault 3\n",
                                  "memory.events": "low 0\nhigh 0\nmax 3\noom 0\noom_kill 0\n",
                                  "memory.pressure": "some avg10=0.00 avg60=0.00 avg300=0.00 total=10\n"
                                                     "full avg10=0.00 avg60=0.00 avg300=0.00 total=4\n"})
    c = read_memory_counters(v2)
    assert c.major_faults == 11 and c.refaults == 3 and c.pressure_full_us == 4    # a kernel before 5.9
    (v2 / "memory.pressure").unlink()                               # a kernel without PSI
    assert read_memory_counters(v2).pressure_full_us is None


def test_fixture_trees_read_major_faults():
    root = Path(__file__).parent.parent / "fixtures" / "cgroup"
    stats = [p for p in root.rglob("memory.stat") if "pgmajfault" in p.read_text()]
    assert stats
    for stat in stats:
        assert read_memory_counters(stat.parent).major_faults == 12


THRASH = Thrashing(since=100.0, seconds=10.2, reread_rate=1234.5, stall_share=None, limit_bytes=CAP)


def _status(returncode: int, thrashing: Thrashing | None = THRASH) -> SupervisorStatus:
    return SupervisorStatus(returncode=returncode, main_pid=7, phase="fingerprint", oom_kill_start=0,
                            oom_kill_end=0, thrashing=thrashing)


def _facts(status: SupervisorStatus):
    return gather_facts(status, host_oom_first=0, host_oom_last=0, exit_code=143, engine_oom_killed=False,
                        engine_oom_events=0, interrupt_signal=None)


def test_status_round_trips_the_thrashing_record():
    data = _status(-15).to_json()
    assert data["thrashing"]["reread_rate"] == 1234.5
    assert SupervisorStatus.from_json(data).thrashing == THRASH
    assert SupervisorStatus.from_json(_status(-15, None).to_json()).thrashing is None


@pytest.mark.parametrize("returncode", [-15, -9, 1])
def test_a_thrashed_run_is_oom_without_a_kill_and_without_a_victim(returncode):
    verdict = classify(_facts(_status(returncode)))
    assert verdict.outcome is Outcome.OOM and verdict.oom_source == "thrashing"
    assert verdict.oom_kills == 0 and verdict.victims == ()      # the supervisor's SIGKILL is no OOM victim


def test_a_kernel_kill_during_the_thrash_is_still_reported_as_the_kill():
    status = _status(-9)
    status.oom_kill_end = 1
    verdict = classify(_facts(status))
    assert verdict.oom_source == "cgroup" and verdict.oom_kills == 1


def test_a_run_that_finished_despite_the_watch_is_ok():
    assert classify(_facts(_status(0))).outcome is Outcome.OK


def test_thrash_message_says_where_how_long_and_the_evidence():
    text = thrash_message(THRASH, "fingerprint", None, ["case001"])
    assert text.startswith("nnU-Net thrashed at the 1 GiB cap for 10 s during fingerprint extraction")
    assert "1234 pages read back a second" in text or "1235 pages read back a second" in text
    assert "nnrun ended it" in text and "case001" in text
    startup = thrash_message(Thrashing(1.0, 12.0, None, 0.7, CAP), "startup", None, [])
    assert "while it started" in startup and "stalled on memory 70% of the time" in startup
