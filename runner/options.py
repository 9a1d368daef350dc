"""The options of ``nnrun preprocess``: validation and the nnU-Net command line.

nnrun declares every option of ``nnUNetv2_plan_and_preprocess`` 2.8.1 itself,
so that a wrong value is ``bad_input`` before any container starts, and builds
the exact nnU-Net argv from them.  Pure: no I/O.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from runner.configurations import check_configurations, default_plans_name
from runner.errors import BadInputError

# nnUNetv2_plan_and_preprocess defaults (experiment_planning/plan_and_preprocess_entrypoints.py).
DEFAULT_CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres")
DEFAULT_NP = {"2d": 8, "3d_fullres": 4, "3d_lowres": 8}
DEFAULT_NP_OTHER = 4
DEFAULT_NPFP = 8
NNUNET_COMMAND = "nnUNetv2_plan_and_preprocess"

# Options that take one or more values in nnU-Net (argparse nargs='+').  The CLI
# spreads `-c 2d 3d_fullres` into `-c 2d -c 3d_fullres` before parsing.
MULTI_VALUE_OPTIONS = ("-d", "-c", "-np", "-overwrite_target_spacing")

_CLASS_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CONFIG_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_PLANS_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # no leading "-": nnU-Net would read it as an option


@dataclass(frozen=True)
class PreprocessOptions:
    """nnU-Net's own options, as nnrun passes them on."""

    dataset_id: int
    configurations: tuple[str, ...] = DEFAULT_CONFIGURATIONS
    np: tuple[int, ...] | None = None          # None: nnU-Net's per-configuration defaults
    npfp: int = DEFAULT_NPFP
    verify_dataset_integrity: bool = False
    no_pp: bool = False
    clean: bool = False
    planner: str = "ExperimentPlanner"
    fingerprint_extractor: str = "DatasetFingerprintExtractor"
    gpu_memory_target: float | None = None
    preprocessor_name: str = "DefaultPreprocessor"
    overwrite_target_spacing: tuple[float, ...] | None = None
    overwrite_plans_name: str | None = None
    verbose: bool = False
    extra_args: tuple[str, ...] = field(default_factory=tuple)   # after `--`, verbatim

    def workers_per_configuration(self) -> dict[str, int]:
        """The -np nnU-Net will use for each configuration (its defaults when not given)."""
        if self.np is None:
            return {c: DEFAULT_NP.get(c, DEFAULT_NP_OTHER) for c in self.configurations}
        values = self.np if len(self.np) > 1 else self.np * len(self.configurations)
        return dict(zip(self.configurations, values))

    @property
    def plans_name(self) -> str:
        """The plans file (without .json) the run writes and preprocesses with: -overwrite_plans_name, else
        the planner's own (nnUNetPlans for ExperimentPlanner, nnUNetResEncUNetMPlans for nnUNetPlannerResEncM)."""
        return self.overwrite_plans_name or default_plans_name(self.planner)

    def without_configurations(self, names) -> PreprocessOptions:
        """A copy without ``names`` (configurations nnU-Net skipped), their -np values dropped; unchanged when
        that would leave no configuration."""
        keep = tuple(c for c in self.configurations if c not in set(names))
        if not keep or len(keep) == len(self.configurations):
            return self
        np = self.np
        if np is not None and len(np) > 1:
            per = self.workers_per_configuration()
            values = tuple(per[c] for c in keep)
            np = (values[0],) if len(set(values)) == 1 else values
        return replace(self, configurations=keep, np=np)

    def with_workers(self, configuration: str | None = None, np: int | None = None,
                     npfp: int | None = None) -> PreprocessOptions:
        """A copy with a new worker count for one configuration (or all), or a new -npfp."""
        new = self
        if npfp is not None:
            new = replace(new, npfp=npfp)
        if np is not None:
            per = self.workers_per_configuration()
            for c in per:
                if configuration is None or c == configuration:
                    per[c] = np
            values = tuple(per[c] for c in self.configurations)
            new = replace(new, np=(values[0],) if len(set(values)) == 1 else values)
        return new


def validate(opts: PreprocessOptions) -> PreprocessOptions:
    """Raise BadInputError for values nnU-Net would reject or misread."""
    if not 1 <= opts.dataset_id <= 999:
        raise BadInputError(f"invalid dataset id {opts.dataset_id}: nnU-Net dataset ids are 1 to 999")
    if not opts.configurations:
        raise BadInputError("-c needs at least one configuration, e.g. -c 3d_fullres")
    for c in opts.configurations:
        if not _CONFIG_NAME.match(c):
            raise BadInputError(f"invalid configuration name {c!r} for -c (e.g. 2d, 3d_fullres, 3d_lowres)")
    if len(set(opts.configurations)) != len(opts.configurations):
        raise BadInputError(f"-c lists a configuration twice: {' '.join(opts.configurations)}")
    if opts.np is not None:
        if len(opts.np) not in (1, len(opts.configurations)):
            raise BadInputError(
                f"-np takes one value or one per configuration: got {len(opts.np)} values "
                f"for {len(opts.configurations)} configurations ({' '.join(opts.configurations)})")
        for n in opts.np:
            if n < 1:
                raise BadInputError(f"-np must be at least 1 (got {n})")
    if opts.npfp < 1:
        raise BadInputError(f"-npfp must be at least 1 (got {opts.npfp})")
    for flag, value in (("-pl", opts.planner), ("-fpe", opts.fingerprint_extractor),
                        ("-preprocessor_name", opts.preprocessor_name)):
        if not _CLASS_NAME.match(value):
            raise BadInputError(f"{flag} must be a Python class name (got {value!r})")
    if opts.gpu_memory_target is not None and not opts.gpu_memory_target > 0:
        raise BadInputError(f"-gpu_memory_target must be a positive number of GB (got {opts.gpu_memory_target})")
    if opts.overwrite_target_spacing is not None:
        if len(opts.overwrite_target_spacing) != 3 or any(not s > 0 for s in opts.overwrite_target_spacing):
            raise BadInputError("-overwrite_target_spacing takes three positive numbers, e.g. 1 0.8 0.8")
    if opts.overwrite_plans_name is not None and not _PLANS_NAME.match(opts.overwrite_plans_name):
        raise BadInputError(f"-overwrite_plans_name must be a plain file name (got {opts.overwrite_plans_name!r})")
    return opts


def validate_configurations(opts: PreprocessOptions, plans: dict | None, *, fingerprint_kept: bool = True,
                            shard: bool = False) -> str | None:
    """Refuse (BadInputError) a ``-c`` name nnU-Net would skip, before any container starts.

    ``plans``: the plans file ``opts.plans_name``.json as it is now (None: not
    planned yet).  They are final, so that only their configuration names are
    valid, for a shard run (it never plans) and when the run will plan exactly
    as they were planned: the same planner, the fingerprint kept
    (``fingerprint_kept`` and no --clean), no -gpu_memory_target or
    -overwrite_target_spacing.  Otherwise the names nnU-Net's planner can make
    are valid too.  Returns a note when a name is accepted only because a
    planner nnU-Net does not ship may plan it.  The rule itself:
    :func:`runner.configurations.check_configurations`.
    """
    final = plans is not None and (shard or (
        fingerprint_kept and not opts.clean and opts.gpu_memory_target is None
        and opts.overwrite_target_spacing is None and plans.get("experiment_planner_used") == opts.planner))
    return check_configurations(opts.configurations, plans, f"{opts.plans_name}.json", planner=opts.planner,
                                plans_final=final,
                                default_requested=tuple(opts.configurations) == DEFAULT_CONFIGURATIONS)


def nnunet_argv(opts: PreprocessOptions) -> list[str]:
    """The nnUNetv2_plan_and_preprocess command line that matches the options.

    Options left at nnU-Net's defaults are not passed, so that the native
    command a user would type and nnrun's run are the same run.
    """
    argv = [NNUNET_COMMAND, "-d", str(opts.dataset_id)]
    if tuple(opts.configurations) != DEFAULT_CONFIGURATIONS:
        argv += ["-c", *opts.configurations]
    if opts.np is not None:
        argv += ["-np", *(str(n) for n in opts.np)]
    if opts.npfp != DEFAULT_NPFP:
        argv += ["-npfp", str(opts.npfp)]
    if opts.verify_dataset_integrity:
        argv.append("--verify_dataset_integrity")
    if opts.no_pp:
        argv.append("--no_pp")
    if opts.clean:
        argv.append("--clean")
    if opts.planner != "ExperimentPlanner":
        argv += ["-pl", opts.planner]
    if opts.fingerprint_extractor != "DatasetFingerprintExtractor":
        argv += ["-fpe", opts.fingerprint_extractor]
    if opts.gpu_memory_target is not None:
        argv += ["-gpu_memory_target", str(opts.gpu_memory_target)]
    if opts.preprocessor_name != "DefaultPreprocessor":
        argv += ["-preprocessor_name", opts.preprocessor_name]
    if opts.overwrite_target_spacing is not None:
        argv += ["-overwrite_target_spacing", *(str(s) for s in opts.overwrite_target_spacing)]
    if opts.overwrite_plans_name is not None:
        argv += ["-overwrite_plans_name", opts.overwrite_plans_name]
    if opts.verbose:
        argv.append("--verbose")
    argv += list(opts.extra_args)
    return argv


def nnrun_argv(opts: PreprocessOptions, mem_arg: str, nnrun_options: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The ``nnrun preprocess`` command line for these options (used for advice)."""
    plain = nnunet_argv(replace(opts, extra_args=()))[3:]   # drop the command and "-d ID"
    argv = ["nnrun", "preprocess", "-d", str(opts.dataset_id), "--mem", mem_arg, *nnrun_options, *plain]
    if opts.extra_args:
        argv += ["--", *opts.extra_args]
    return argv


def spread_multi_value_options(argv: list[str]) -> list[str]:
    """Turn nnU-Net's ``-c 2d 3d_fullres`` into ``-c 2d -c 3d_fullres`` for the CLI parser.

    Stops at ``--`` (the rest goes to nnU-Net verbatim).  A value is any token
    that does not start with ``-`` (or is a negative number).
    """
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            out.extend(argv[i:])
            break
        out.append(token)
        i += 1
        if token in MULTI_VALUE_OPTIONS:
            first = True
            while i < len(argv) and (not argv[i].startswith("-") or _is_number(argv[i])):
                if not first:
                    out.append(token)
                out.append(argv[i])
                first = False
                i += 1
    return out


def _is_number(token: str) -> bool:
    try:
        float(token)
        return True
    except ValueError:
        return False
