"""The one source of "memory needed" (runner.estimate.need) and everything that prints a --mem from it:
the refusal before a run, `nnrun estimate`, the OOM advice, earlier runs' measured peaks, k8s diagnose."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.backends.k8s.pods import advised_mem
from runner.dataset import load_raw_dataset
from runner.demo import CaseSpec, make_dataset
from runner.diagnosis.advice import recommend
from runner.diagnosis.classify import Verdict, Victim
from runner.errors import BadInputError, NotEnoughMemoryError, Outcome
from runner.estimate.model import Baseline, Estimate, estimate, load_model
from runner.estimate.need import MEASURED_MARGIN, memory_needed
from runner.options import PreprocessOptions, nnrun_argv, validate
from runner.run.admission import check_fits
from runner.run.history import earlier_peaks, merge_peaks, peaks_from_events
from runner.run.memory import need_after_oom
from runner.rundir import AGENT_EVENTS_FILE, MANIFEST_FILE, NNRUN_DIR
from runner.units import GIB, MIB, format_mem_arg, parse_mem

BASE = Baseline(main_bytes=350 * MIB, worker_bytes=420 * MIB, image_id="sha256:img", measured=True,
                shared_bytes=150 * MIB)
OOM_MAIN = Verdict(Outcome.OOM, 1, "cgroup", (Victim("main", 7, None, 1.0),))
OOM_WORKER = Verdict(Outcome.OOM, 1, "cgroup", (Victim("worker", 69, "case001", 1.0),))


@pytest.fixture(scope="module")
def two_channel(tmp_path_factory):
    """Two channels, anisotropic slices, five cases of different sizes."""
    root = tmp_path_factory.mktemp("need")
    cases = [CaseSpec((96, 96, 40), (0.7, 0.7, 2.5)), CaseSpec((112, 104, 36), (0.6, 0.6, 3.0)),
             CaseSpec((128, 120, 44), (0.8, 0.8, 2.0)), CaseSpec((88, 96, 32), (0.75, 0.75, 2.2)),
             CaseSpec((120, 128, 48), (0.65, 0.65, 2.8))]
    make_dataset(root, 611, "Need", cases, channels=2, seed=5)
    return load_raw_dataset(root, "611")


def _est(dataset, cap: int, configurations=("3d_fullres",)) -> Estimate:
    return estimate(dataset, None, list(configurations), cap, BASE, load_model(), cpus=2)


def _argv_mem(argv: list[str]) -> str:
    return argv[argv.index("--mem") + 1]


def test_the_largest_part_sets_the_cap_with_its_margin(two_channel):
    est = _est(two_channel, 8 * GIB)
    need = memory_needed(est, fingerprint=True, configurations=None)
    assert need.binding.bytes == max(p.bytes for p in need.parts)
    assert need.binding.kind == "main_end"            # two channels: 2 x 1e8 samples, stacked three times
    assert need.mem_bytes >= need.binding.bytes * (1 + est.margin)
    assert need.mem_bytes == parse_mem(need.mem_arg)  # round-trips through --mem
    assert f"plus a {est.margin:.0%} margin" in need.reason()
    # Without the fingerprint (it exists) the preprocessing cases set it, and it is smaller.
    later = memory_needed(est, fingerprint=False, configurations=None)
    assert later.binding.kind == "case" and later.mem_bytes < need.mem_bytes


def test_every_cap_gives_the_same_mem_and_it_fits(two_channel):
    """`nnrun estimate` once said 1088m at 6mb and 1856m at 1088m: one function, every part at once."""
    mems = set()
    for cap in (6 * MIB, 250 * MIB, 1088 * MIB, 1856 * MIB, 2600 * MIB):
        est = _est(two_channel, cap)
        try:
            need = check_fits(est, None, fingerprint_needed=True)
            mems.add(need.mem_arg)
        except NotEnoughMemoryError as err:
            mems.add(err.mem_arg)
    assert len(mems) == 1, mems
    mem = parse_mem(mems.pop())
    check_fits(_est(two_channel, mem), None, fingerprint_needed=True)      # and that figure is not refused


def test_refusal_estimate_and_oom_advice_print_the_same_mem(two_channel):
    """The refusal (nnrun choosing workers), `nnrun estimate`'s line and the advice after a main-process
    OOM with pinned workers, on the same data and cap."""
    cap = 1200 * MIB
    est = _est(two_channel, cap)
    with pytest.raises(NotEnoughMemoryError) as refused:
        check_fits(est, None, fingerprint_needed=True)
    estimate_line = memory_needed(est, fingerprint=True, configurations=None)
    opts = validate(PreprocessOptions(611, configurations=("3d_fullres",), np=(1,), npfp=1))
    need_after = memory_needed(est, fingerprint=True, configurations=["3d_fullres"], at_least={"main": cap})
    rec = recommend(OOM_MAIN, "fingerprint", None, opts, cap, 24 * GIB, need_after)
    assert refused.value.mem_arg == estimate_line.mem_arg == format_mem_arg(rec.mem_bytes)
    assert f"--mem {estimate_line.mem_arg}" in rec.text


def test_pinned_workers_are_refused_only_when_the_main_process_cannot_run(two_channel):
    tight = _est(two_channel, 300 * MIB)                  # below the main process's baseline + samples
    with pytest.raises(NotEnoughMemoryError, match="main process"):
        check_fits(tight, None, fingerprint_needed=True, main_only=True)
    middle = _est(two_channel, 1300 * MIB)                # holds the main process, not its end-of-fingerprint peak
    check_fits(middle, None, fingerprint_needed=True, main_only=True)
    with pytest.raises(BadInputError):
        check_fits(middle, None, fingerprint_needed=True)


def test_the_main_process_is_refused_only_when_its_anonymous_part_cannot_fit(tmp_path):
    """Native nnU-Net finished a fingerprint under 1536 MiB where the main process's RSS was predicted 1.6 GiB:
    its library pages (shared_bytes) can be dropped under the cap, its samples cannot."""
    make_dataset(tmp_path, 612, "One", [CaseSpec((64, 64, 32), (1.0, 1.0, 1.0))] * 3)
    one = load_raw_dataset(tmp_path, "612")
    peak = _est(one, 8 * GIB).main_fingerprint_peak_bytes
    check_fits(_est(one, peak - BASE.shared_bytes), None, fingerprint_needed=True)          # worth a try
    with pytest.raises(NotEnoughMemoryError) as refused:
        check_fits(_est(one, peak - BASE.shared_bytes - MIB), None, fingerprint_needed=True)
    assert parse_mem(refused.value.mem_arg) >= peak * 1.1           # the advice keeps the whole peak and its margin


def test_refusal_above_the_host_names_no_mem(two_channel):
    with pytest.raises(NotEnoughMemoryError) as refused:
        check_fits(_est(two_channel, 300 * MIB), 1 * GIB, fingerprint_needed=True)
    assert refused.value.mem_arg is None and "larger machine" in refused.value.hint


def test_a_measured_case_replaces_its_estimate_with_a_smaller_margin(two_channel):
    est = _est(two_channel, 8 * GIB)
    plain = memory_needed(est, fingerprint=False, configurations=None)
    case = plain.binding.what.split()[0]
    measured = {("preprocessing", "3d_fullres", case): 3 * GIB}
    need = memory_needed(est, fingerprint=False, configurations=None, measured=measured)
    assert need.binding.source == "measured" and need.binding.margin == MEASURED_MARGIN
    assert need.binding.bytes == BASE.main_bytes + 3 * GIB - BASE.shared_bytes
    smaller = memory_needed(est, fingerprint=False, configurations=None,
                            measured={("preprocessing", "3d_fullres", case): BASE.worker_bytes})
    assert smaller.mem_bytes < plain.mem_bytes or smaller.binding.what != plain.binding.what


def test_a_kill_at_the_cap_with_one_worker_raises_the_floor(two_channel):
    est = _est(two_channel, 8 * GIB)
    plain = memory_needed(est, fingerprint=False, configurations=None)
    cap = plain.binding.bytes + 200 * MIB     # the estimate said it fits; the kill says it did not
    need = memory_needed(est, fingerprint=False, configurations=None, at_least={"case001": cap})
    assert need.binding.source == "killed at the cap" and need.mem_bytes > cap
    rec = recommend(OOM_WORKER, "preprocessing", "3d_fullres",
                    validate(PreprocessOptions(611, configurations=("3d_fullres",), np=(1,), npfp=1)),
                    cap, 24 * GIB, need)
    assert rec.mem_bytes == need.mem_bytes > cap


def test_a_thrash_with_one_worker_asks_for_more_than_the_cap_and_says_why(two_channel):
    """A run that thrashed at the cap has no victim; with one worker its working set needed more than the cap."""
    est = _est(two_channel, 8 * GIB)
    cap = memory_needed(est, fingerprint=True, configurations=["3d_fullres"]).binding.bytes + 100 * MIB
    opts = validate(PreprocessOptions(611, configurations=("3d_fullres",), np=(1,), npfp=1))
    need = need_after_oom(est, opts, True, {}, "fingerprint", None, [], [], 1, cap, thrashed=True)
    assert need.binding.source == "thrashed at the cap" and need.mem_bytes > cap
    assert "at least: it thrashed at that cap" in need.reason()
    thrashed = Verdict(Outcome.OOM, 0, "thrashing")
    rec = recommend(thrashed, "fingerprint", None, opts, cap, 24 * GIB, need)
    assert rec.mem_bytes == need.mem_bytes and f"--mem {need.mem_arg}" in rec.text
    # In a pool of several workers, a thrash is answered like a worker's kill: fewer workers, same cap.
    pool = validate(PreprocessOptions(611, configurations=("3d_fullres",), np=(1,), npfp=4))
    need = need_after_oom(est, pool, True, {}, "fingerprint", None, [], [], 4, cap, thrashed=True)
    rec = recommend(thrashed, "fingerprint", None, pool, cap, 24 * GIB, need, fit_npfp=1)
    assert rec.options.npfp == 1 and rec.mem_bytes is None


def test_oom_in_a_pool_where_one_worker_fits_means_fewer_workers_fitted_by_the_estimate(two_channel):
    est = _est(two_channel, 8 * GIB)
    need = memory_needed(est, fingerprint=False, configurations=["3d_fullres"])
    opts = validate(PreprocessOptions(611, configurations=("3d_fullres",), np=(8,), npfp=1))
    rec = recommend(OOM_WORKER, "preprocessing", "3d_fullres", opts, 8 * GIB, 24 * GIB, need,
                    fit_np={"3d_fullres": 2})
    assert rec.options.np == (2,) and rec.mem_bytes is None and "same cap" in rec.text


def test_oom_in_a_pool_where_not_even_one_worker_fits_raises_the_cap_and_frees_the_workers(two_channel):
    cap = 1300 * MIB
    est = _est(two_channel, cap)
    need = memory_needed(est, fingerprint=True, configurations=["3d_fullres"])
    assert not need.fits(cap)
    opts = validate(PreprocessOptions(611, configurations=("3d_fullres",), np=(2,), npfp=4))
    rec = recommend(OOM_MAIN, "fingerprint", None, opts, cap, 24 * GIB, need)
    assert rec.mem_bytes == need.mem_bytes
    argv = nnrun_argv(rec.options, format_mem_arg(rec.mem_bytes))
    assert "-np" not in argv and "-npfp" not in argv          # nnrun's admission fits the workers to the new cap
    assert "nnrun fits the workers" in rec.text


@settings(max_examples=60, deadline=None)
@given(limit=st.integers(64 * MIB, 16 * GIB), npfp=st.integers(1, 8), np=st.integers(1, 8),
       victim=st.sampled_from([OOM_MAIN, OOM_WORKER]), phase=st.sampled_from(["fingerprint", "preprocessing",
                                                                               "planning"]))
def test_advice_with_an_estimate_is_always_fewer_workers_or_more_memory(limit, npfp, np, victim, phase):
    est = Estimate(cap_bytes=limit, margin=0.15, baseline=BASE, cpus=2, main_fingerprint_peak_bytes=1600 * MIB,
                   main_fingerprint_pool_bytes=750 * MIB,
                   per_case=[{"case": "case001", "phase": "preprocessing", "configuration": "3d_fullres",
                              "predicted_peak_bytes": 900 * MIB, "extra_bytes": 480 * MIB}])
    opts = validate(PreprocessOptions(611, configurations=("3d_fullres",), np=(np,), npfp=npfp))
    need = memory_needed(est, fingerprint=phase == "fingerprint", configurations=["3d_fullres"],
                         at_least={"main": limit} if victim is OOM_MAIN else {})
    rec = recommend(victim, phase, "3d_fullres" if phase == "preprocessing" else None, opts, limit, None, need)
    assert rec is not None and rec.options is not None
    fewer = rec.mem_bytes is None
    if fewer:
        assert (rec.options.npfp < npfp) or (rec.options.np[0] < np)
    else:
        assert rec.mem_bytes > limit and rec.mem_bytes >= need.mem_bytes


def _run_folder(pre, run_id: str, image_id: str, events: list[dict], plans_name=None):
    folder = pre / NNRUN_DIR / "runs" / run_id
    folder.mkdir(parents=True)
    (folder / MANIFEST_FILE).write_text(json.dumps({"image": {"id": image_id},
                                                    "options": {"overwrite_plans_name": plans_name}}))
    (folder / AGENT_EVENTS_FILE).write_text("".join(json.dumps(e) + "\n" for e in events))


def test_earlier_runs_peaks_same_image_and_plans_only(tmp_path):
    end = {"event": "case_end", "case": "case001", "phase": "preprocessing", "configuration": "3d_fullres"}
    _run_folder(tmp_path, "1", "sha256:img", [{**end, "peak_rss_bytes": 900}, {**end, "peak_rss_bytes": 1000},
                                              {"event": "case_start", "case": "case002", "phase": "fingerprint"}])
    _run_folder(tmp_path, "2", "sha256:img", [{**end, "phase": "fingerprint", "configuration": None,
                                               "peak_rss_bytes": 700}])
    _run_folder(tmp_path, "3", "sha256:other", [{**end, "peak_rss_bytes": 99999}])
    _run_folder(tmp_path, "4", "sha256:img", [{**end, "peak_rss_bytes": 88888}], plans_name="MyPlans")
    (tmp_path / NNRUN_DIR / "runs" / "5").mkdir()        # a run folder without a manifest: ignored
    peaks = earlier_peaks(tmp_path, "sha256:img")
    assert peaks == {("preprocessing", "3d_fullres", "case001"): 1000, ("fingerprint", None, "case001"): 700}
    assert earlier_peaks(tmp_path, "sha256:img", "MyPlans") == {("preprocessing", "3d_fullres", "case001"): 88888}
    assert earlier_peaks(tmp_path / "missing", "sha256:img") == {}


def test_peaks_from_events_and_merge_take_the_largest():
    a = peaks_from_events([{"event": "case_end", "case": "c", "phase": "fingerprint", "configuration": "x",
                            "peak_rss_bytes": 5}, {"event": "case_end", "case": "c", "phase": "planning",
                                                   "peak_rss_bytes": 7}])
    assert a == {("fingerprint", None, "c"): 5}
    assert merge_peaks(a, {("fingerprint", None, "c"): 9}) == {("fingerprint", None, "c"): 9}


class _Term:
    def __init__(self, message):
        self.message = message


class _Pod:
    def __init__(self, message):
        self.terminated, self.last_terminated = _Term(message), None


def test_k8s_takes_nnruns_own_advice_from_the_termination_message():
    tail = ("nnrun: oom (out of memory): ...\n  advice:       raise the cap\n"
            "  next:         nnrun preprocess -d 611 --mem 2560m -c 3d_fullres\n")
    assert advised_mem(_Pod(tail)) == "2560m"
    assert advised_mem(_Pod("nnU-Net: Some background worker is 6 feet under.")) is None
    assert advised_mem(_Pod("  next:         nnrun preprocess -d 611 --mem lots\n")) is None
