"""runner.run.admission: the memory model the agent admits cases with, and which workers start early (pure).

Numbers of the benchmark's mixed-size scenario (measured in the image: main process 402 MiB, a worker
402 MiB of which 157 MiB are shared library pages; margin 15 %): a large case of 3.5 GiB extra needs
the cap to itself, the small ones (0.1 GiB extra) fit two at a time.
"""
from __future__ import annotations

import pytest

from runner.estimate.model import Baseline, Estimate
from runner.options import PreprocessOptions
from runner.run.admission import admission_plan, case_needs, resolve_workers, warm_workers

MIB = 2**20
BASE = Baseline(main_bytes=402 * MIB, worker_bytes=402 * MIB, image_id="sha256:x", measured=True,
                shared_bytes=157 * MIB)


def _est(cap_mib: int, extras_mib: dict, cpus: int = 2, margin: float = 0.15) -> Estimate:
    est = Estimate(cap_bytes=cap_mib * MIB, margin=margin, baseline=BASE, cpus=cpus)
    for case, extra in extras_mib.items():
        est.per_case.append({"case": case, "phase": "preprocessing", "configuration": "3d_fullres",
                             "predicted_peak_bytes": BASE.worker_bytes + extra * MIB, "extra_bytes": extra * MIB})
    return est


MIXED = {"case000": 99, "case001": 185, "case002": 99, "case003": 3540, "case008": 1510, "case009": 185}


def test_the_margin_applies_to_each_cases_predicted_peak():
    need = case_needs(_est(4412, MIXED), "3d_fullres")
    assert need["case003"] == 3540 * MIB + round(0.15 * (402 + 3540) * MIB)
    assert need["case000"] == 99 * MIB + round(0.15 * (402 + 99) * MIB)


def test_admission_plan_gives_the_agent_the_memory_model():
    plan = admission_plan(_est(4412, MIXED), "3d_fullres", max_workers=2)
    assert plan["model"] == 2 and plan["workers"] == 2
    assert (plan["cap_bytes"], plan["main_bytes"], plan["worker_added_bytes"]) == (4412 * MIB, 402 * MIB, 245 * MIB)
    assert plan["need_bytes"] == case_needs(_est(4412, MIXED), "3d_fullres")
    assert plan["case_bytes"]["case003"] == 3540 * MIB
    # the large case alone next to its worker and the main process: over the cap with its margin...
    assert plan["main_bytes"] + plan["worker_added_bytes"] + plan["need_bytes"]["case003"] > plan["cap_bytes"]
    # ...so it runs when nothing else does; two small ones side by side fit
    assert plan["main_bytes"] + 2 * plan["worker_added_bytes"] + 2 * plan["need_bytes"]["case001"] <= plan["cap_bytes"]


def test_admission_plan_workers_bounded_by_cap_cores_cases_and_max():
    assert admission_plan(_est(1000, MIXED), "3d_fullres", 2)["workers"] == 1    # two small ones do not fit
    assert admission_plan(_est(64000, MIXED, cpus=4), "3d_fullres", 8)["workers"] == 4
    assert admission_plan(_est(64000, {"a": 10}, cpus=4), "3d_fullres", 8)["workers"] == 1
    assert admission_plan(_est(64000, MIXED, cpus=4), "3d_fullres", 3)["workers"] == 3
    assert admission_plan(_est(64000, MIXED), "2d", 2) is None


def test_resolve_workers_memory_schedule_takes_the_plans_workers():
    opts = resolve_workers(PreprocessOptions(dataset_id=502, configurations=("3d_fullres",)),
                           _est(4412, MIXED), np_auto=False, npfp_auto=False, schedule="memory")
    assert opts.workers_per_configuration() == {"3d_fullres": 2}


def _opts(**kw) -> PreprocessOptions:
    return PreprocessOptions(dataset_id=502, configurations=("3d_fullres",), **{"np": (1,), **kw})


def _with_fingerprint(est: Estimate, fp_extra_mib: int, main_end_mib: int, main_pool_mib: int) -> Estimate:
    for case in MIXED:
        est.per_case.append({"case": case, "phase": "fingerprint", "configuration": None,
                             "predicted_peak_bytes": BASE.worker_bytes + fp_extra_mib * MIB,
                             "extra_bytes": fp_extra_mib * MIB})
    est.main_fingerprint_peak_bytes, est.main_fingerprint_pool_bytes = main_end_mib * MIB, main_pool_mib * MIB
    return est


def test_warm_workers_when_the_fingerprint_exists():
    est = _est(4412, MIXED)
    assert warm_workers(_opts(), est, "memory", False, True) == {"configuration": "3d_fullres", "kind": "memory",
                                                                  "workers": 1}
    assert warm_workers(_opts(), est, "fixed", True, True) == {"configuration": "3d_fullres", "kind": "fixed",
                                                               "workers": 1}
    # a count the user gave: that pool, started early
    assert warm_workers(_opts(np=(2,)), est, "fixed", False, True) == {"configuration": "3d_fullres",
                                                                        "kind": "fixed", "workers": 2}


def test_warm_workers_beside_the_fingerprint_only_when_it_still_fits():
    """No fingerprint yet (or --clean): the idle warm workers must leave room for the fingerprint pool and for
    the main process's peak at the end of the fingerprint, margins included."""
    roomy = _with_fingerprint(_est(4412, MIXED), fp_extra_mib=300, main_end_mib=1600, main_pool_mib=800)
    assert warm_workers(_opts(npfp=2), roomy, "memory", False, False)["workers"] == 1
    assert warm_workers(_opts(npfp=2, clean=True), roomy, "memory", False, True)["workers"] == 1
    assert warm_workers(_opts(np=(2,), npfp=2), roomy, "fixed", False, False)["workers"] == 2
    # the fingerprint pool of 2 fits alone but not beside a warm worker: 800 + 2 x (545 + 0.15 x 702) = 2101 MiB
    # of a 2300 MiB cap, and a warm worker adds 245 MiB
    pool_tight = _with_fingerprint(_est(2300, MIXED), fp_extra_mib=300, main_end_mib=1000, main_pool_mib=800)
    assert warm_workers(_opts(npfp=1), pool_tight, "memory", False, False) is not None     # one fingerprint worker
    assert warm_workers(_opts(npfp=2), pool_tight, "memory", False, False) is None
    # the main process at the end of the fingerprint: 1900 MiB x 1.15 = 2185 MiB, + 245 MiB > 2300 MiB
    end_tight = _with_fingerprint(_est(2300, MIXED), fp_extra_mib=10, main_end_mib=1900, main_pool_mib=500)
    assert warm_workers(_opts(npfp=1), end_tight, "memory", False, False) is None
    assert warm_workers(_opts(npfp=1), end_tight, "memory", False, True) is not None       # no fingerprint phase


def test_no_warm_workers_otherwise():
    est = _est(4412, MIXED)
    assert warm_workers(_opts(), None, "memory", False, True) is None            # no estimate
    assert warm_workers(_opts(no_pp=True), est, "memory", False, True) is None
    assert warm_workers(_opts(verify_dataset_integrity=True), est, "memory", False, True) is None
    assert warm_workers(_opts(), _est(500, MIXED), "memory", False, True) is None   # not even idle ones fit


def test_check_fits_ignores_preprocessing_for_a_no_pp_run():
    """A --no_pp run (the plan step of a sharded run) never preprocesses: a case too large for
    preprocessing under the cap must not refuse it; the same estimate refuses a preprocessing run."""
    from runner.errors import BadInputError
    from runner.estimate.model import Baseline, Estimate
    from runner.run.admission import check_fits

    est = Estimate(cap_bytes=1 << 30, margin=0.15, baseline=Baseline(200 << 20, 400 << 20, "i", True),
                   cpus=2, per_case=[{"case": "big", "phase": "preprocessing", "configuration": "3d_fullres",
                                      "predicted_peak_bytes": 2 << 30, "extra_bytes": (2 << 30) - (400 << 20)}])
    check_fits(est, None, fingerprint_needed=True, preprocessing=False)
    with pytest.raises(BadInputError, match="big"):
        check_fits(est, None, fingerprint_needed=True, preprocessing=True)


def test_a_case_measured_by_an_earlier_run_is_known_not_estimated():
    measured = {("preprocessing", "3d_fullres", "case003"): 3000 * MIB,      # the estimate said 402 + 3540
                ("preprocessing", "2d", "case001"): 9000 * MIB,              # another configuration: ignored
                ("fingerprint", None, "case000"): 9000 * MIB}                # another phase: ignored
    need = case_needs(_est(4412, MIXED), "3d_fullres", measured)
    assert need["case003"] == (3000 - 402) * MIB + round(0.10 * 3000 * MIB)
    assert need["case001"] == case_needs(_est(4412, MIXED), "3d_fullres")["case001"]
    assert need["case000"] == case_needs(_est(4412, MIXED), "3d_fullres")["case000"]
    plan = admission_plan(_est(4412, MIXED), "3d_fullres", max_workers=2, measured=measured)
    assert plan["measured_cases"] == ["case003"] and plan["need_bytes"] == need
    # measured lower than predicted, the large case now fits next to its worker and the main process
    assert plan["main_bytes"] + plan["worker_added_bytes"] + need["case003"] <= plan["cap_bytes"]


def test_a_measured_peak_above_the_estimate_raises_the_need_and_can_lower_the_workers():
    small = {"a": 300, "b": 300}
    assert admission_plan(_est(2200, small), "3d_fullres", 2)["workers"] == 2
    measured = {("preprocessing", "3d_fullres", c): 1400 * MIB for c in small}
    plan = admission_plan(_est(2200, small), "3d_fullres", 2, measured=measured)
    assert plan["workers"] == 1
    opts = resolve_workers(PreprocessOptions(dataset_id=502, configurations=("3d_fullres",)), _est(2200, small),
                           np_auto=False, npfp_auto=False, schedule="memory", measured=measured)
    assert opts.workers_per_configuration() == {"3d_fullres": 1}
