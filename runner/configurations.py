"""nnU-Net's configurations: which names ``-c`` may take, and why nnU-Net skipped one.

nnU-Net 2.8.1 (``experiment_planning/plan_and_preprocess_api.py``,
``preprocess_dataset``) preprocesses each ``-c`` configuration that its plans
file has and prints "Configuration X not found in plans file ... Skipping."
for any other name, exiting 0: ``-c nonsense`` is a successful run that
preprocessed nothing.  nnrun refuses such names before any container starts
(:func:`check_configurations`) and, after a run, reads the plans to tell
which of the configurations asked for were preprocessed and why the others
were skipped (:func:`preprocessed_and_skipped`).

What the planner makes (``ExperimentPlanner.plan_experiment``):

- ``2d`` always;
- ``3d_fullres`` only when the median image shape after resampling has more
  than one slice along the first (transposed) axis, i.e. for 3D images;
- ``3d_lowres`` only when the ``3d_fullres`` patch holds less than 25 %
  (``lowres_creation_threshold``) of the voxels of that median shape; the
  planner then raises the spacing until the patch holds at least 25 % of the
  coarser median shape, and drops ``3d_lowres`` again if that coarser median
  shape has not at least halved the voxel count;
- ``3d_cascade_fullres`` (it inherits from ``3d_fullres``, same data) only
  together with ``3d_lowres``.

``save_plans`` keeps configurations of an existing plans file that the new
plans do not have (custom configurations survive a re-plan).  The planners
shipped with nnU-Net 2.8.1 (the ResEnc ones, the torch-resampling ones)
subclass ``ExperimentPlanner`` without changing ``plan_experiment``: same
names, another default plans file.  Pure: no I/O.
"""
from __future__ import annotations

import math

from runner.errors import BadInputError

DEFAULT_PLANNER = "ExperimentPlanner"
# The names ExperimentPlanner.plan_experiment can put into the plans.
PLANNER_CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")
# nnU-Net 2.8.1's planners and the plans file each writes without -overwrite_plans_name.
BUILTIN_PLANNERS = {
    "ExperimentPlanner": "nnUNetPlans",
    "ResEncUNetPlanner": "nnUNetResEncUNetPlans",
    "nnUNetPlannerResEncM": "nnUNetResEncUNetMPlans",
    "nnUNetPlannerResEncL": "nnUNetResEncUNetLPlans",
    "nnUNetPlannerResEncXL": "nnUNetResEncUNetXLPlans",
    "nnUNetPlannerResEncL_torchres": "nnUNetResEncUNetLPlans_torchres",
    "nnUNetPlannerResEncL_torchres_sepz": "nnUNetResEncUNetLPlans_torchres_sepz",
    "nnUNetPlanner_torchres": "nnUNetPlans_torchres",
    "nnUNetPlannerResEncL_noResampling": "nnUNetResEncUNetLPlans_noResampling",
}
LOWRES_CREATION_THRESHOLD = 0.25     # ExperimentPlanner.lowres_creation_threshold


def default_plans_name(planner: str) -> str:
    """The plans file name (without .json) ``-pl planner`` writes; nnUNetPlans for planners nnU-Net does not ship."""
    return BUILTIN_PLANNERS.get(planner, "nnUNetPlans")


def planned(plans: dict | None) -> list[str]:
    """The configuration names of a plans file (inheriting ones such as 3d_cascade_fullres included)."""
    if not plans:
        return []
    cfgs = plans.get("configurations")
    return [str(c) for c in cfgs] if isinstance(cfgs, dict) else []


def check_configurations(configurations: tuple[str, ...] | list[str], plans: dict | None, plans_file: str, *,
                         planner: str = DEFAULT_PLANNER, plans_final: bool = False,
                         default_requested: bool = False) -> str | None:
    """Refuse a ``-c`` name nnU-Net would skip; return a note when a name is accepted unchecked.

    ``plans``: the plans file as it is before the run (None: none yet), named
    ``plans_file`` in messages.  ``plans_final``: the run will not plan
    anything differently (a shard run; or plans made by this very planner with
    the fingerprint kept and no option that changes planning): then the plans'
    names are the only valid ones.  Otherwise the planner may plan anew: the
    names of the plans plus those nnU-Net's planner can make are valid, and
    with a planner nnU-Net does not ship (``-pl``) any name is accepted with a
    note.  ``default_requested``: ``-c`` was not given (nnU-Net's default list
    2d 3d_fullres 3d_lowres): nothing is refused, nnU-Net skips what its plans
    lack and the report says so.
    """
    if default_requested:
        return None
    have = planned(plans)
    if plans_final and plans is not None:
        valid = have
    else:
        valid = list(have) + [c for c in PLANNER_CONFIGURATIONS if c not in have]
    unknown = [c for c in configurations if c not in valid]
    if not unknown:
        return None
    if planner not in BUILTIN_PLANNERS and not (plans_final and plans is not None):
        return (f"-c {' '.join(unknown)}: not a configuration nnU-Net's own planners make; accepted because "
                f"-pl {planner} may plan it (nnU-Net skips a configuration its plans do not have; the report "
                f"will list it as skipped)")
    name = unknown[0]
    valid_text = " ".join(valid) if valid else "none"
    if plans is not None and name in PLANNER_CONFIGURATIONS:
        why = planner_rule(name, plans)
        raise BadInputError(f"-c {name}: {plans_file} has none" + (f" ({why})" if why else "")
                            + f"; valid: {valid_text}", hint="nnU-Net would skip it and preprocess nothing for it")
    source = (f"the configurations of {plans_file}" if plans_final and plans is not None
              else "the configurations nnU-Net's planner makes"
              + (f" or {plans_file} has" if have else ""))
    raise BadInputError(f"unknown configuration {name!r} for -c; valid ({source}): {valid_text}")


def _voxels(shape) -> float:
    return math.prod([float(s) for s in shape], start=1.0)


def _shape_text(shape) -> str:
    return "x".join(str(int(round(float(s)))) for s in shape)


def skip_reason(configuration: str, plans: dict | None, plans_file: str) -> str | None:
    """Why nnU-Net skips ``configuration`` with these plans (None: the plans have it, or there are none):
    "nnUNetPlans.json has none: nnU-Net plans it only when ..."."""
    if plans is None:
        return None
    cfgs = plans.get("configurations")
    cfgs = cfgs if isinstance(cfgs, dict) else {}
    if configuration in cfgs:
        return None
    why = planner_rule(configuration, plans)
    return f"{plans_file} has none" + (f": {why}" if why else "")


def planner_rule(configuration: str, plans: dict) -> str | None:
    """The rule of nnU-Net's planner that left ``configuration`` out of ``plans``, with this dataset's numbers
    (None: not one of the planner's names, or plans made by a planner nnU-Net does not ship)."""
    cfgs = plans.get("configurations")
    cfgs = cfgs if isinstance(cfgs, dict) else {}
    planner = plans.get("experiment_planner_used")
    if (planner is not None and planner not in BUILTIN_PLANNERS) or configuration not in PLANNER_CONFIGURATIONS:
        return None
    if configuration != "2d" and "3d_fullres" not in cfgs and "2d" in cfgs:
        return ("the images are 2D (the median image has a single slice) and nnU-Net plans only 2d for "
                "2D images")
    if configuration == "3d_lowres" and "3d_fullres" in cfgs:
        full = cfgs["3d_fullres"] if isinstance(cfgs["3d_fullres"], dict) else {}
        rule = ("nnU-Net plans it only when the 3d_fullres patch holds less than "
                f"{LOWRES_CREATION_THRESHOLD * 100:.0f} % of the voxels of the median image after resampling")
        patch, median = full.get("patch_size"), full.get("median_image_size_in_voxels")
        try:
            ratio = _voxels(patch) / _voxels(median)
        except (TypeError, ValueError, ZeroDivisionError):
            return rule
        if ratio >= LOWRES_CREATION_THRESHOLD:
            return (f"{rule}; here the patch {_shape_text(patch)} holds {ratio * 100:.0f} % of the median image "
                    f"{_shape_text(median)}")
        return ("nnU-Net tried a coarser spacing for it and dropped it because that spacing did not halve the "
                "voxel count of the median image")
    if configuration == "3d_cascade_fullres" and "3d_lowres" not in cfgs:
        return "nnU-Net plans it only together with 3d_lowres"
    return None


def preprocessed_and_skipped(configurations: tuple[str, ...] | list[str], plans: dict | None,
                             plans_file: str) -> tuple[list[str], list[dict]]:
    """Split the configurations asked for into those nnU-Net preprocesses with these plans and those it skips.

    The skipped ones come as ``{"configuration": name, "reason": sentence}``.
    Without plans nothing can be told: every configuration counts as preprocessed.
    """
    done: list[str] = []
    skipped: list[dict] = []
    for c in configurations:
        reason = skip_reason(c, plans, plans_file)
        if reason is None:
            done.append(c)
        else:
            skipped.append({"configuration": c, "reason": reason})
    return done, skipped
