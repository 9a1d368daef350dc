"""runner.options: validation, the nnU-Net argv, the nnrun argv and the -c/-np spreading."""
from __future__ import annotations

import argparse
import math
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.cli import app as cli
from runner.errors import BadInputError
from runner.options import (
    DEFAULT_NP,
    DEFAULT_NPFP,
    NNUNET_COMMAND,
    PreprocessOptions,
    nnrun_argv,
    nnunet_argv,
    spread_multi_value_options,
    validate,
)


def native_parser() -> argparse.ArgumentParser:
    """The argparse of nnUNetv2_plan_and_preprocess, copied from nnunetv2 2.8.1
    (experiment_planning/plan_and_preprocess_entrypoints.py, plan_and_preprocess_entry
    and _add_logging_args): names, nargs, types and defaults as there."""
    p = argparse.ArgumentParser()
    p.add_argument('-d', nargs='+', type=int)
    p.add_argument('-fpe', type=str, required=False, default='DatasetFingerprintExtractor')
    p.add_argument('-npfp', type=int, default=8, required=False)
    p.add_argument("--verify_dataset_integrity", required=False, default=False, action="store_true")
    p.add_argument('--no_pp', default=False, action='store_true', required=False)
    p.add_argument("--clean", required=False, default=False, action="store_true")
    p.add_argument('-pl', type=str, default='ExperimentPlanner', required=False)
    p.add_argument('-gpu_memory_target', default=None, type=float, required=False)
    p.add_argument('-preprocessor_name', default='DefaultPreprocessor', type=str, required=False)
    p.add_argument('-overwrite_target_spacing', default=None, nargs='+', required=False)
    p.add_argument('-overwrite_plans_name', default=None, required=False)
    p.add_argument('-c', required=False, default=['2d', '3d_fullres', '3d_lowres'], nargs='+')
    p.add_argument('-np', type=int, nargs='+', default=None, required=False)
    p.add_argument('--verbose', required=False, action='store_true')
    p.add_argument('--no_pbar', required=False, action='store_true')
    return p


def native_parse(argv: list[str]) -> argparse.Namespace:
    assert argv[0] == NNUNET_COMMAND
    return native_parser().parse_args(argv[1:])


# -- validate ------------------------------------------------------------------

def test_defaults_are_valid():
    opts = PreprocessOptions(501)
    assert validate(opts) is opts


@pytest.mark.parametrize("changes,words", [
    (dict(dataset_id=0), "dataset id"),
    (dict(dataset_id=1000), "dataset id"),
    (dict(dataset_id=-3), "dataset id"),
    (dict(np=(0,)), "-np"),
    (dict(np=(4, -1, 4)), "-np"),
    (dict(np=(4, 2)), "-np"),                                   # 2 values for 3 configurations
    (dict(np=(1, 2, 3, 4)), "-np"),
    (dict(configurations=("3d_fullres", "2d", "3d_fullres")), "twice"),
    (dict(configurations=()), "-c"),
    (dict(configurations=("3d fullres",)), "configuration"),
    (dict(configurations=("2d;rm",)), "configuration"),
    (dict(npfp=0), "-npfp"),
    (dict(planner="My-Planner"), "-pl"),
    (dict(planner="1Planner"), "-pl"),
    (dict(fingerprint_extractor="a.b"), "-fpe"),
    (dict(preprocessor_name=""), "-preprocessor_name"),
    (dict(gpu_memory_target=0.0), "-gpu_memory_target"),
    (dict(gpu_memory_target=-8.0), "-gpu_memory_target"),
    (dict(gpu_memory_target=math.nan), "-gpu_memory_target"),
    (dict(overwrite_target_spacing=(1.0, 0.5)), "-overwrite_target_spacing"),
    (dict(overwrite_target_spacing=(1.0, 0.5, 0.5, 0.5)), "-overwrite_target_spacing"),
    (dict(overwrite_target_spacing=(1.0, 0.0, 0.5)), "-overwrite_target_spacing"),
    (dict(overwrite_target_spacing=(-1.0, 0.5, 0.5)), "-overwrite_target_spacing"),
    (dict(overwrite_target_spacing=(math.nan, 0.5, 0.5)), "-overwrite_target_spacing"),
    (dict(overwrite_plans_name="../evil"), "-overwrite_plans_name"),
    (dict(overwrite_plans_name=""), "-overwrite_plans_name"),
])
def test_validate_rejects_bad_values_as_bad_input(changes, words):
    with pytest.raises(BadInputError) as info:
        validate(replace(PreprocessOptions(501), **changes))
    assert words in info.value.one_line()
    assert "\n" not in info.value.one_line()


@pytest.mark.parametrize("name", ["--help", "-x"])
def test_validate_rejects_a_plans_name_that_nnunet_would_read_as_an_option(name):
    opts = PreprocessOptions(501, overwrite_plans_name=name)
    # nnU-Net's argparse reads such a value as an option: -overwrite_plans_name gets no value.
    with pytest.raises(SystemExit):
        native_parse(nnunet_argv(opts))
    with pytest.raises(BadInputError):
        validate(opts)


@pytest.mark.parametrize("changes", [
    dict(dataset_id=1), dict(dataset_id=999), dict(np=(1,)), dict(np=(8, 4, 8)),
    dict(configurations=("3d_fullres",), np=(2,)), dict(configurations=("3d_cascade_fullres",)),
    dict(planner="nnUNetPlannerResEncM"), dict(gpu_memory_target=0.5),
    dict(overwrite_target_spacing=(3.0, 0.8, 0.8)), dict(overwrite_plans_name="nnUNetPlans_custom-1.0"),
])
def test_validate_accepts_good_values(changes):
    validate(replace(PreprocessOptions(501), **changes))


# -- nnunet_argv ---------------------------------------------------------------

def test_nnunet_argv_of_defaults_is_just_the_dataset():
    assert nnunet_argv(PreprocessOptions(501)) == [NNUNET_COMMAND, "-d", "501"]


@pytest.mark.parametrize("changes,tokens", [
    (dict(configurations=("3d_fullres",)), ["-c", "3d_fullres"]),
    (dict(configurations=("3d_fullres", "2d")), ["-c", "3d_fullres", "2d"]),
    (dict(np=(2,)), ["-np", "2"]),
    (dict(np=(8, 2, 8)), ["-np", "8", "2", "8"]),
    (dict(npfp=2), ["-npfp", "2"]),
    (dict(verify_dataset_integrity=True), ["--verify_dataset_integrity"]),
    (dict(no_pp=True), ["--no_pp"]),
    (dict(clean=True), ["--clean"]),
    (dict(planner="nnUNetPlannerResEncM"), ["-pl", "nnUNetPlannerResEncM"]),
    (dict(fingerprint_extractor="MyFPE"), ["-fpe", "MyFPE"]),
    (dict(gpu_memory_target=8.0), ["-gpu_memory_target", "8.0"]),
    (dict(preprocessor_name="MyPre"), ["-preprocessor_name", "MyPre"]),
    (dict(overwrite_target_spacing=(1.0, 0.5, 0.5)), ["-overwrite_target_spacing", "1.0", "0.5", "0.5"]),
    (dict(overwrite_plans_name="custom"), ["-overwrite_plans_name", "custom"]),
    (dict(verbose=True), ["--verbose"]),
])
def test_nnunet_argv_passes_exactly_the_non_default_option(changes, tokens):
    argv = nnunet_argv(replace(PreprocessOptions(501), **changes))
    assert argv == [NNUNET_COMMAND, "-d", "501", *tokens]


def test_nnunet_argv_is_what_a_user_types_for_native_nnunet():
    opts = PreprocessOptions(501, configurations=("3d_fullres",), np=(4,), npfp=1)
    assert " ".join(nnunet_argv(opts)) == "nnUNetv2_plan_and_preprocess -d 501 -c 3d_fullres -np 4 -npfp 1"


def test_nnunet_argv_appends_extra_args_verbatim_at_the_end():
    extra = ("--no_pbar", "-x", "a b", "--", "'quoted'", "")
    argv = nnunet_argv(PreprocessOptions(501, npfp=2, extra_args=extra))
    assert argv[-len(extra):] == list(extra)
    assert argv[:-len(extra)] == [NNUNET_COMMAND, "-d", "501", "-npfp", "2"]


def test_native_nnunet_reads_the_defaults_as_its_own_defaults():
    ns = native_parse(nnunet_argv(PreprocessOptions(501)))
    assert ns.d == [501]
    assert ns.c == ["2d", "3d_fullres", "3d_lowres"] and ns.np is None and ns.npfp == DEFAULT_NPFP
    assert (ns.pl, ns.fpe, ns.preprocessor_name) == ("ExperimentPlanner", "DatasetFingerprintExtractor",
                                                      "DefaultPreprocessor")
    assert not (ns.verify_dataset_integrity or ns.no_pp or ns.clean or ns.verbose or ns.no_pbar)
    assert ns.gpu_memory_target is None and ns.overwrite_target_spacing is None and ns.overwrite_plans_name is None


valid_options = st.builds(
    PreprocessOptions,
    dataset_id=st.integers(1, 999),
    configurations=st.lists(st.sampled_from(["2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"]),
                            min_size=1, max_size=4, unique=True).map(tuple),
    npfp=st.integers(1, 32),
    verify_dataset_integrity=st.booleans(),
    no_pp=st.booleans(),
    clean=st.booleans(),
    planner=st.sampled_from(["ExperimentPlanner", "nnUNetPlannerResEncM"]),
    fingerprint_extractor=st.sampled_from(["DatasetFingerprintExtractor", "MyFPE"]),
    gpu_memory_target=st.one_of(st.none(), st.floats(0.1, 80, allow_nan=False)),
    preprocessor_name=st.sampled_from(["DefaultPreprocessor", "MyPreprocessor"]),
    overwrite_target_spacing=st.one_of(st.none(), st.tuples(*[st.floats(0.1, 10, allow_nan=False)] * 3)),
    overwrite_plans_name=st.one_of(st.none(), st.sampled_from(["custom", "nnUNetPlans_1.5mm"])),
    verbose=st.booleans(),
).flatmap(lambda o: st.one_of(
    st.just(o),
    st.integers(1, 16).map(lambda n: replace(o, np=(n,))),
    st.lists(st.integers(1, 16), min_size=len(o.configurations), max_size=len(o.configurations))
      .map(lambda ns: replace(o, np=tuple(ns)))))


@settings(max_examples=150, deadline=None)
@given(valid_options)
def test_native_nnunet_parses_nnunet_argv_back_to_the_same_options(opts):
    validate(opts)
    ns = native_parse(nnunet_argv(opts))
    assert ns.d == [opts.dataset_id]
    assert tuple(ns.c) == opts.configurations
    assert (tuple(ns.np) if ns.np is not None else None) == opts.np
    assert ns.npfp == opts.npfp
    assert ns.verify_dataset_integrity == opts.verify_dataset_integrity
    assert ns.no_pp == opts.no_pp and ns.clean == opts.clean and ns.verbose == opts.verbose
    assert (ns.pl, ns.fpe, ns.preprocessor_name) == (opts.planner, opts.fingerprint_extractor,
                                                      opts.preprocessor_name)
    assert ns.gpu_memory_target == opts.gpu_memory_target
    assert ((tuple(float(s) for s in ns.overwrite_target_spacing) if ns.overwrite_target_spacing else None)
            == opts.overwrite_target_spacing)
    assert ns.overwrite_plans_name == opts.overwrite_plans_name


# -- spread_multi_value_options ------------------------------------------------

@pytest.mark.parametrize("argv,expected", [
    (["-c", "2d", "3d_fullres"], ["-c", "2d", "-c", "3d_fullres"]),
    (["-c", "2d"], ["-c", "2d"]),
    (["-np", "8", "4", "8", "-npfp", "2"], ["-np", "8", "-np", "4", "-np", "8", "-npfp", "2"]),
    (["-overwrite_target_spacing", "1", "0.5", "0.5"],
     ["-overwrite_target_spacing", "1", "-overwrite_target_spacing", "0.5", "-overwrite_target_spacing", "0.5"]),
    (["-d", "501", "502", "--mem", "4g"], ["-d", "501", "-d", "502", "--mem", "4g"]),
    (["-np", "-1", "2"], ["-np", "-1", "-np", "2"]),                   # negative numbers are values
    (["-c", "2d", "--json"], ["-c", "2d", "--json"]),
    (["preprocess", "--mem", "4g"], ["preprocess", "--mem", "4g"]),
    ([], []),
])
def test_spread_multi_value_options(argv, expected):
    assert spread_multi_value_options(argv) == expected


def test_spread_stops_at_double_dash():
    argv = ["-c", "2d", "3d_fullres", "--", "-c", "a", "b", "-np", "1", "2"]
    assert spread_multi_value_options(argv) == ["-c", "2d", "-c", "3d_fullres", "--", "-c", "a", "b", "-np",
                                                "1", "2"]


def test_spread_does_not_change_its_input():
    argv = ["-c", "2d", "3d_fullres"]
    spread_multi_value_options(argv)
    assert argv == ["-c", "2d", "3d_fullres"]


# -- workers -------------------------------------------------------------------

def test_workers_per_configuration_defaults_are_nnunets():
    opts = PreprocessOptions(501, configurations=("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"))
    assert opts.workers_per_configuration() == {"2d": 8, "3d_fullres": 4, "3d_lowres": 8,
                                                "3d_cascade_fullres": 4}
    assert DEFAULT_NP == {"2d": 8, "3d_fullres": 4, "3d_lowres": 8}


def test_workers_per_configuration_single_value_applies_to_all():
    assert PreprocessOptions(501, np=(3,)).workers_per_configuration() == {"2d": 3, "3d_fullres": 3,
                                                                          "3d_lowres": 3}


def test_workers_per_configuration_per_config_values():
    opts = PreprocessOptions(501, configurations=("3d_fullres", "2d"), np=(2, 6))
    assert opts.workers_per_configuration() == {"3d_fullres": 2, "2d": 6}


def test_with_workers_changes_one_configuration_only():
    opts = PreprocessOptions(501, np=(8, 4, 8))
    new = opts.with_workers(configuration="3d_fullres", np=2)
    assert new.np == (8, 2, 8)
    assert opts.np == (8, 4, 8)                         # frozen: the original is untouched
    assert new.npfp == opts.npfp


def test_with_workers_for_all_configurations_collapses_to_one_value():
    new = PreprocessOptions(501, np=(8, 4, 8)).with_workers(np=1)
    assert new.np == (1,)
    assert new.workers_per_configuration() == {"2d": 1, "3d_fullres": 1, "3d_lowres": 1}


def test_with_workers_npfp_only_keeps_np():
    opts = PreprocessOptions(501)
    new = opts.with_workers(npfp=4)
    assert new.npfp == 4 and new.np is None
    assert new == replace(opts, npfp=4)


def test_plans_name_default_and_override():
    assert PreprocessOptions(501).plans_name == "nnUNetPlans"
    assert PreprocessOptions(501, overwrite_plans_name="custom").plans_name == "custom"


# -- nnrun_argv ----------------------------------------------------------------

def test_nnrun_argv_shape():
    opts = PreprocessOptions(501, configurations=("3d_fullres",), np=(2,), npfp=1, extra_args=("--no_pbar",))
    argv = nnrun_argv(opts, "1200m", ["--raw", "raw"])
    assert argv == ["nnrun", "preprocess", "-d", "501", "--mem", "1200m", "--raw", "raw",
                    "-c", "3d_fullres", "-np", "2", "-npfp", "1", "--", "--no_pbar"]


def test_nnrun_argv_without_extra_args_has_no_double_dash():
    assert "--" not in nnrun_argv(PreprocessOptions(501), "4g")


def parse_with_cli(control, argv: list[str]):
    """Run cli.main on nnrun_argv(...)[1:] with the fake Preprocess; return the options it got."""
    assert argv[0] == "nnrun"
    before = len(control.calls)
    code = cli.main(argv[1:])
    assert code == 0
    assert len(control.calls) == before + 1
    return control.opts, control.settings


def test_nnrun_argv_round_trips_through_the_cli(fake_preprocess, capsys):
    opts = PreprocessOptions(501, configurations=("2d", "3d_fullres"), np=(8, 2), npfp=4, clean=True,
                             gpu_memory_target=8.0, overwrite_target_spacing=(3.0, 0.8, 0.8),
                             overwrite_plans_name="custom", verbose=True, extra_args=("--no_pbar", "-x", "a b"))
    got, got_settings = parse_with_cli(fake_preprocess, nnrun_argv(opts, "1200m", ["--raw", "/r", "--image", "i:1"]))
    assert got == opts
    assert got_settings.mem == "1200m"
    assert got_settings.raw_root == "/r" and got_settings.image == "i:1"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(opts=valid_options,
       extra=st.lists(st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=8), max_size=3))
def test_nnrun_argv_round_trip_property(fake_preprocess, capsys, opts, extra):
    opts = replace(opts, extra_args=tuple(extra))
    got, _ = parse_with_cli(fake_preprocess, nnrun_argv(opts, "4g"))
    assert got == opts
