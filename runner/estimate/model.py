"""Predict the peak memory of nnU-Net preprocessing, per case and phase, from image headers and what the data says.

``nnrun estimate`` answers "how many workers fit under this cap?" before any
run: it reads each case's headers with the reader nnU-Net picks for the
dataset, whatever the format (``runner.formats.headers``: shape, spacing, data
type, channel count; no voxel data), adds, where nnrun's pre-flight file check
has read the voxels (NIfTI), each case's crop to the nonzero region and its
foreground fraction (:func:`with_data_stats`), derives the target spacing of each configuration (from
``nnUNetPlans.json`` when it exists, else nnU-Net's planner rule), and predicts
each worker's peak RSS per case:

    peak = worker baseline (interpreter + torch + nnunetv2, measured once per image)
         + extra bytes of the case (this module's model)

The model is physically motivated, following what nnU-Net 2.8.1 allocates
(see /work/shared/notes/nnunet-internals.md "What eats memory"):

* **fingerprint** worker (``DatasetFingerprintExtractor.analyze_case``): images
  and segmentation read as float32 (``4 N (C+1)`` bytes, plus the reader's
  native-dtype copies and boolean masks of the crop), then per channel
  ``rs.choice(foreground, num_samples)`` with ``num_samples = 1e8 // n_cases``
  (int64 indices + float32 samples), and finally the pickled result sent to the
  main process.  With few cases the sampling dominates: ~600 MiB per worker
  for a 2-case dataset however small its images are.
* **preprocessing** worker (``DefaultPreprocessor.run_case_save``): the reader's
  float32 arrays stay referenced while ``run_case_npy`` copies them
  (``8 N (C+1)``); resampling converts to float64 (``8 C N``) and, per
  channel, either zooms in 3-d with order-3 splines (float64 prefiltered copy
  ``8 N`` + float64 output ``8 N_out``) or, when the spacing is anisotropic
  (ratio > 3), resamples slice by slice into a float64 intermediate
  (``8 N_mid``) and then along z with ``map_coordinates`` over a float64
  coordinate grid (``~56 N_out``); the segmentation is resampled the same way
  after the data (one-hot order-1 masks when not separate-z); foreground
  sampling uses ``np.argwhere`` and sorts the coordinates (int64, ``~88``
  bytes per labelled output voxel).

nnU-Net crops every case to the bounding box of "any channel is nonzero"
before anything else (``crop_to_nonzero``; the fingerprint too): the reader's
arrays and their copies have the image's size (``n``), but normalisation,
the float64 resampling copies, the resampled output and the foreground
sampling have the crop's size (``nc``, and ``n_out`` from the crop's shape).
For skull-stripped or masked MRI with wide zero margins the crop can be a
third of the image; CT (air -1000) is never cropped.

For every stage the held + transient bytes are computed; the stage with the
largest total is the predicted peak stage, and its two parts (bytes
proportional to the input, ``in``, and workspace proportional to the
resampled output or to the fingerprint samples, ``ws``) are scaled by
coefficients fitted by least squares on real runs
(``scripts/calibrate_estimate.py``, which writes ``runner/estimate/estimate_model.json``)::

    extra = c0 + c_in * in_bytes + c_ws * ws_bytes

The crop shape and the foreground fraction (label > 0 voxels over the crop's
voxels) come from the data: the pre-flight file check computes each file's
nonzero bounding box and count while it streams the voxels and caches them
per file version (``runner.formats.check_cache.case_data_stats``; the union
of the channels' boxes is the crop; nnU-Net's hole filling never changes a
box).  This module only receives them (:func:`with_data_stats`, called by
:mod:`runner.estimate.data`): it stays pure.  Where they are unknown (a format
without a voxel scan, files not checked in their current version,
``--skip-file-check`` on a first run) the estimate is the header-only one: no
cropping (cropping only lowers memory) and the assumed foreground fraction
``model["foreground_fraction"]``; the target spacing rule then runs on the
uncropped shapes.  ``3d_lowres`` is predicted from its planned spacing when the
plans exist; without plans it falls back to the ``3d_fullres`` spacing
(conservative: the low-res spacing is coarser) and says so in ``notes``.

Everything here is pure.  The baseline is measured in a real container by
:mod:`runner.estimate.baseline`; the coefficients are fitted by :mod:`runner.estimate.calibrate`.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from runner.dataset import RawDataset
from runner.formats.headers import case_infos
from runner.units import format_bytes

MODEL_PATH = Path(__file__).with_name("estimate_model.json")
PHASES = ("fingerprint", "preprocessing")
# nnunetv2.configuration.ANISO_THRESHOLD
ANISO_THRESHOLD = 3.0
# DatasetFingerprintExtractor.num_foreground_voxels_for_intensitystats
FINGERPRINT_TOTAL_SAMPLES = 10e7
MiB = 1 << 20

# Used when estimate_model.json is missing (e.g. before the first calibration): unit coefficients.
DEFAULT_MODEL: dict = {
    "model_version": 1,
    "coefficients": {
        "fingerprint": {"c0": 30 * MiB, "c_in": 1.0, "c_ws": 1.0},
        "preprocessing": {"c0": 30 * MiB, "c_in": 1.0, "c_ws": 1.0},
        "main_fingerprint": {"c_ws": 1.0},
    },
    "foreground_fraction": 0.1,
    "margin": 0.25,
}


# --------------------------------------------------------------------------- geometry

@dataclass(frozen=True)
class CaseGeometry:
    """What the headers say about one case (axes x, y, z, as in a NIfTI or SimpleITK header).

    ``dataset_cases`` is the number of cases in the dataset: the fingerprint
    worker samples ``1e8 // dataset_cases`` foreground voxels per channel, so a
    case's fingerprint memory depends on it.
    """

    case_id: str
    shape: tuple[int, ...]          # 3 values
    spacing: tuple[float, ...]      # 3 values
    channels: int
    image_itemsize: int
    label_itemsize: int
    dataset_cases: int = 1
    is_2d: bool = False             # one slice (natural images): nnU-Net plans only 2d
    # From the data (the pre-flight file check, :func:`with_data_stats`), None = unknown (headers only):
    crop_shape: tuple[int, ...] | None = None     # nonzero bounding box of all channels (x, y, z)
    foreground_fraction: float | None = None      # label > 0 voxels / crop_shape voxels

    @property
    def voxels(self) -> int:
        return math.prod(self.shape)

    @property
    def cropped_shape(self) -> tuple[int, ...]:
        """The shape nnU-Net resamples: the nonzero bounding box when known, else the whole image."""
        return tuple(self.crop_shape) if self.crop_shape is not None else tuple(self.shape)

    @property
    def cropped_voxels(self) -> int:
        return math.prod(self.cropped_shape)


def _as3(values, fill) -> tuple:
    values = tuple(values)[:3]
    return values + (fill,) * (3 - len(values))


def dataset_geometry(dataset: RawDataset) -> list[CaseGeometry]:
    """Header-only geometry of every case, read with the reader nnU-Net picks (no voxel data)."""
    geoms = []
    n = len(dataset.cases)
    for info in case_infos(dataset):
        first = info.images[0]
        geoms.append(CaseGeometry(
            case_id=info.case_id,
            shape=tuple(int(s) for s in _as3(first.shape, 1)),
            spacing=tuple(abs(float(s)) for s in _as3(first.spacing, 1.0)),
            channels=info.channels,
            image_itemsize=max(h.itemsize for h in info.images),
            label_itemsize=info.label.itemsize,
            dataset_cases=n,
            is_2d=all(h.is_2d for h in info.images),
        ))
    return geoms


def with_data_stats(geoms: Sequence[CaseGeometry],
                    stats: Mapping[str, tuple[Sequence[int], float]]) -> list[CaseGeometry]:
    """The geometries with what the data says: ``stats`` is ``{case_id: (crop shape x, y, z, foreground fraction)}``.

    (``runner.formats.check_cache.case_data_stats`` reads it from the
    pre-flight file check's record.)  Cases missing from ``stats``, or whose
    crop shape does not fit in the image, stay header-only.
    """
    out = []
    for g in geoms:
        got = stats.get(g.case_id)
        if got is not None:
            crop, fg = got
            crop = tuple(int(n) for n in _as3(crop, 1))
            if all(1 <= c <= n for c, n in zip(crop, g.shape)) and 0.0 <= float(fg) <= 1.0:
                g = replace(g, crop_shape=crop, foreground_fraction=float(fg))
        out.append(g)
    return out


# --------------------------------------------------------------------------- target spacing

def _percentile(values: Sequence[float], q: float) -> float:
    """numpy.percentile's default (linear interpolation), without numpy."""
    v = sorted(values)
    if len(v) == 1:
        return float(v[0])
    pos = (len(v) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return float(v[lo] + (v[hi] - v[lo]) * (pos - lo))


def rule_target_spacing_zyx(geoms: Sequence[CaseGeometry]) -> list[float]:
    """``ExperimentPlanner.determine_fullres_target_spacing`` in nnU-Net's (z, y, x) order.

    nnU-Net uses the shapes after cropping to the non-zero region: the crop
    shapes when the data gave them, else the headers' (uncropped) shapes.
    """
    spacings = [list(reversed(g.spacing)) for g in geoms]
    sizes = [list(reversed(g.cropped_shape)) for g in geoms]
    target = [_percentile([s[a] for s in spacings], 50) for a in range(3)]
    target_size = [_percentile([s[a] for s in sizes], 50) for a in range(3)]
    worst = max(range(3), key=lambda a: (target[a], -a))        # np.argmax: first maximum
    others = [a for a in range(3) if a != worst]
    other_spacings = [target[a] for a in others]
    other_sizes = [target_size[a] for a in others]
    aniso_spacing = target[worst] > ANISO_THRESHOLD * max(other_spacings)
    aniso_voxels = target_size[worst] * ANISO_THRESHOLD < min(other_sizes)
    if aniso_spacing and aniso_voxels:
        t = _percentile([s[worst] for s in spacings], 10)
        if t < max(other_spacings):
            t = max(max(other_spacings), t) + 1e-5
        target[worst] = t
    return target


def _transpose_forward(target_zyx: Sequence[float]) -> list[int]:
    worst = max(range(3), key=lambda a: (target_zyx[a], -a))
    return [worst] + [a for a in range(3) if a != worst]


def planned_target_spacing(plans: dict | None, configuration: str,
                           geoms: Sequence[CaseGeometry]) -> tuple[float, ...] | None:
    """The target spacing of ``configuration`` in the NIfTI header's (x, y, z) order.

    From the plans when given: ``plans["configurations"][c]["spacing"]`` is in
    nnU-Net's transposed (z, y, x) order (``transpose_forward`` applied to the
    reversed header axes) and is mapped back here.  Without plans: nnU-Net's
    rule (median spacing; an anisotropic low-resolution axis gets the 10th
    percentile).  For ``2d`` only the in-plane spacing is resampled: the axis
    that keeps each case's own spacing is ``math.nan``.  ``3d_lowres`` without
    plans: the 3d_fullres spacing (see :func:`configuration_note`).  None when
    the plans lack the configuration or there are no cases.
    """
    if plans is not None:
        cfgs = plans.get("configurations") or {}
        cfg = cfgs.get(configuration)
        if cfg is None:
            return None
        # inheriting configurations (e.g. 3d_cascade_fullres) take their parent's spacing
        seen = set()
        while "spacing" not in cfg and cfg.get("inherits_from") and cfg["inherits_from"] not in seen:
            seen.add(cfg["inherits_from"])
            cfg = {**cfgs.get(cfg["inherits_from"], {}), **{k: v for k, v in cfg.items() if k != "inherits_from"}}
        spacing = [float(s) for s in cfg["spacing"]]
        tf = [int(a) for a in plans.get("transpose_forward", [0, 1, 2])]
        if len(spacing) == 2:
            spacing = [math.nan] + spacing
        zyx = [math.nan] * 3
        for k, axis in enumerate(tf):
            zyx[axis] = spacing[k]
        return tuple(reversed(zyx))
    if not geoms:
        return None
    target = rule_target_spacing_zyx(geoms)
    if configuration == "2d":
        target[_transpose_forward(target)[0]] = math.nan
    return tuple(reversed(target))


def configuration_note(plans: dict | None, configuration: str) -> str | None:
    if plans is None and configuration == "3d_lowres":
        return ("3d_lowres without plans: nnU-Net's low-resolution spacing search is not modelled; "
                "predicted with the 3d_fullres spacing (an upper bound)")
    if plans is not None and configuration not in (plans.get("configurations") or {}):
        return f"the plans have no {configuration} configuration (nnU-Net skips it)"
    return None


# --------------------------------------------------------------------------- the physical model

def _new_shape(shape, spacing, target) -> tuple[int, ...]:
    """nnU-Net's compute_new_shape (round(old_spacing / new_spacing * old_shape)); nan keeps an axis."""
    out = []
    for n, s, t in zip(shape, spacing, target):
        out.append(int(n) if t is None or math.isnan(t) else int(round(s / t * n)))
    return tuple(out)


def _separate_z_axis(spacing, target) -> int | None:
    """default_resampling.determine_do_sep_z_and_axis (force_separate_z None) in x, y, z order."""
    target = tuple(s if (t is None or math.isnan(t)) else t for s, t in zip(spacing, target))
    for sp in (spacing, target):
        if max(sp) / min(sp) > ANISO_THRESHOLD:
            axes = [a for a in range(3) if max(sp) / sp[a] == 1]
            return axes[0] if len(axes) == 1 else None
    return None


def _foreground_fraction(geom: CaseGeometry, model: dict) -> float:
    """The measured fraction of labelled voxels in the crop, else the model's assumed one."""
    if geom.foreground_fraction is not None:
        return float(geom.foreground_fraction)
    return float(model.get("foreground_fraction", DEFAULT_MODEL["foreground_fraction"]))


# _sample_foreground_locations (nnU-Net 2.8.1), per labelled output voxel: np.argwhere's int64 coordinates (32),
# the selected labels (4), argsort's order (8), the sorted labels (4) and coordinates (32), and
# RandomState.choice(total, replace=False)'s permutation (8).
FOREGROUND_BYTES_PER_VOXEL = 88


def stage_bytes(geom: CaseGeometry, phase: str, target_spacing=None, model: dict | None = None) -> dict:
    """Analytic bytes per stage: ``{stage: (in_bytes, ws_bytes)}`` (before the fitted coefficients).

    ``n`` is the image's voxel count (what the reader allocates and what stays
    referenced); ``nc`` that of the crop to the nonzero region (``geom.crop_shape``;
    the image itself when unknown), which is what nnU-Net normalises, converts to
    float64 and resamples, and whose labelled voxels it samples.
    """
    model = model or DEFAULT_MODEL
    n = geom.voxels
    nc = geom.cropped_voxels
    crop = geom.cropped_shape
    c = geom.channels
    isz = geom.image_itemsize
    lsz = geom.label_itemsize
    fg = _foreground_fraction(geom, model)
    # reading: float32 stack of all channels + the native arrays (and the last SimpleITK image)
    read = c * n * isz + n * isz + 4 * c * n
    if phase == "fingerprint":
        ns = int(FINGERPRINT_TOTAL_SAMPLES // max(1, geom.dataset_cases))
        held = 4 * n * (c + 1)                      # float32 images + float32 seg
        # nonzero mask + hole filling (image), then on the crop: isnan, foreground and crop masks;
        # the foreground voxels of one channel and np.percentile's copy of them
        masks = 2 * n + 3 * nc + c * nc + int(8 * fg * nc)
        return {
            "read": (read + 2 * n * lsz, 0),
            "sampling": (held + masks, 4 * ns * (c + 2)),      # int64 indices + float32 samples, last channel
            "return": (0, 8 * ns * c),                         # the samples + their pickled copy for the main process
        }
    if phase != "preprocessing":
        raise ValueError(f"unknown phase {phase!r}: expected one of {PHASES}")
    if target_spacing is None:
        raise ValueError("preprocessing needs a target spacing")
    new = _new_shape(crop, geom.spacing, target_spacing)
    n_out = math.prod(new)
    held = 8 * n * (c + 1)                          # reader arrays + run_case_npy copies (data and seg)
    stages = {"read": (read + 4 * n * c, 0), "crop": (held + 3 * n, 0)}
    resampled = tuple(new) != tuple(crop)
    if resampled:
        axis = _separate_z_axis(geom.spacing, target_spacing)
        if axis is not None:
            n_mid = n_out // max(1, new[axis]) * crop[axis]
            z_changes = new[axis] != crop[axis]
            # np.mgrid (int64) -> 3 float64 coordinate arrays -> np.array(coord_map) -> map_coordinates float64 output;
            # from the 2nd channel on, the previous channel's coord_map is still referenced while the next is built.
            z_pass_data = (56 if c == 1 else 72) * n_out if z_changes else 0
            z_pass_seg = 56 * n_out if z_changes else 0
            ws_data = 8 * n_mid + z_pass_data + 4 * c * n_out
            ws_seg = 8 * n_mid + z_pass_seg + 4 * n_out + 4 * c * n_out
        else:
            # scipy.ndimage.zoom(order=3, mode='nearest') pads the float64 input by 12 voxels per side and
            # spline-filters the padded copy (two float64 arrays), then writes a float64 output
            n_pad = math.prod(s + 24 for s in crop)
            ws_data = 16 * n_pad + 8 * n_out + 4 * c * n_out
            ws_seg = 9 * nc + 13 * n_out + 4 * c * n_out           # one-hot mask (bool + float64), output, compare
        # the float64 copy of the cropped data (resp. segmentation) next to what is still held
        stages["resample_data"] = (held + 8 * c * nc, ws_data)
        stages["resample_seg"] = (4 * c * n + 8 * n + 8 * nc, ws_seg)
    sample = n_out + int(FOREGROUND_BYTES_PER_VOXEL * fg * n_out)      # np.isin mask + the coordinates
    if resampled:
        # the resampled data and segmentation replace the float32 copies; the reader's arrays stay referenced
        stages["foreground"] = (4 * c * n + 4 * n, 4 * c * n_out + 4 * n_out + sample)
        stages["save"] = (4 * c * n + 4 * n, 4 * c * n_out + 4 * n_out + 3 * n_out)
    else:
        # nothing to resample: nnU-Net keeps the crop, a view that holds on to the whole float32 copies
        stages["foreground"] = (held, sample)
        stages["save"] = (held, 3 * n_out)
    return stages


def peak_stage(stages: dict) -> tuple[str, int, int]:
    name = max(stages, key=lambda k: sum(stages[k]))
    return name, stages[name][0], stages[name][1]


def features(geom: CaseGeometry, phase: str, target_spacing=None, model: dict | None = None) -> tuple[int, int]:
    """(in_bytes, ws_bytes) of the predicted peak stage."""
    _, a, b = peak_stage(stage_bytes(geom, phase, target_spacing, model))
    return a, b


def predict_case_bytes(geom: CaseGeometry, phase: str, target_spacing, model: dict) -> int:
    """The case's extra bytes above the worker baseline, in ``phase`` ("fingerprint" or "preprocessing")."""
    k = model["coefficients"][phase]
    a, b = features(geom, phase, target_spacing, model)
    return max(0, int(round(k["c0"] + k["c_in"] * a + k["c_ws"] * b)))


@dataclass(frozen=True)
class Baseline:
    main_bytes: int          # nnU-Net's main process (imports done), before any case
    worker_bytes: int        # one spawned worker with nnunetv2's preprocessing modules imported
    image_id: str
    measured: bool           # False: a default, not measured in this image
    # File-backed pages (shared libraries: torch, numpy...) that every process maps: the memory cgroup
    # charges them once, so a second process costs its RSS minus these.
    shared_bytes: int = 0

    @property
    def worker_added_bytes(self) -> int:
        """What one more worker process adds to the cgroup's usage before it touches a case."""
        return max(0, self.worker_bytes - self.shared_bytes)


def predict_peak(geom: CaseGeometry, phase: str, target_spacing, baseline: Baseline, model: dict) -> int:
    return baseline.worker_bytes + predict_case_bytes(geom, phase, target_spacing, model)


def predict_main_fingerprint_bytes(geoms: Sequence[CaseGeometry], baseline: Baseline, model: dict) -> int:
    """The main process's peak in the fingerprint phase.

    It gathers ``1e8`` float32 samples per channel from the workers, then
    concatenates them and stacks them into one array (three copies) after the
    pool has ended: ~1.2 GB per channel regardless of the image sizes.
    """
    if not geoms:
        return baseline.main_bytes
    channels = max(g.channels for g in geoms)
    k = model["coefficients"].get("main_fingerprint", {"c_ws": 1.0})
    return baseline.main_bytes + int(k["c_ws"] * 3 * 4 * FINGERPRINT_TOTAL_SAMPLES * channels)


def main_bytes_during_fingerprint_pool(geoms: Sequence[CaseGeometry], baseline: Baseline) -> int:
    """What the main process holds while fingerprint workers still run: up to all samples gathered so far."""
    if not geoms:
        return baseline.main_bytes
    channels = max(g.channels for g in geoms)
    return baseline.main_bytes + int(4 * FINGERPRINT_TOTAL_SAMPLES * channels)


# --------------------------------------------------------------------------- model file

def load_model(path: Path | None = None) -> dict:
    """runner/estimate_model.json (the fitted coefficients); DEFAULT_MODEL when it does not exist."""
    p = Path(path) if path else MODEL_PATH
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        return json.loads(json.dumps(DEFAULT_MODEL))


# --------------------------------------------------------------------------- estimate

def max_workers_that_fit(peaks_sorted_desc: Sequence[int], main_bytes: int, cap_bytes: int, margin: float,
                         cpus: int, shared_bytes: int = 0) -> int:
    """The largest n such that the main process and the n largest cases side by side fit the cap.

    ``peaks_sorted_desc``: each case's worker peak less ``shared_bytes`` (the library pages the main
    process already maps: the cgroup charges them once).  The margin (the model's worst error, measured
    on whole per-case peaks) applies to each case's whole predicted peak, not to the main process,
    whose baseline is measured.  Bounded by the number of cases and by ``cpus`` (at least 1 CPU); 0 when
    not even the largest case fits next to the main process.
    """
    peaks = sorted((int(p) for p in peaks_sorted_desc), reverse=True)
    limit = min(len(peaks), max(1, int(cpus)))
    best = 0
    total = int(main_bytes)
    for n in range(1, limit + 1):
        total += peaks[n - 1] + int(margin * (peaks[n - 1] + shared_bytes))
        if total <= cap_bytes:
            best = n
        else:
            break
    return best


@dataclass
class Estimate:
    cap_bytes: int
    margin: float
    baseline: Baseline
    cpus: int
    per_case: list[dict] = field(default_factory=list)    # {case, phase, configuration, predicted_peak_bytes, extra_bytes}
    largest: dict = field(default_factory=dict)           # "fingerprint" / configuration -> [{case, predicted_peak_bytes}]
    max_np: dict = field(default_factory=dict)            # configuration -> int
    max_npfp: int = 0
    too_large: list[dict] = field(default_factory=list)   # {case, phase, configuration, predicted_peak_bytes}
    main_fingerprint_peak_bytes: int = 0
    main_fingerprint_pool_bytes: int = 0                # the main process while fingerprint workers run
    target_spacings: dict = field(default_factory=dict)   # configuration -> [x, y, z] (null: each case's own)
    notes: list[str] = field(default_factory=list)


def estimate(dataset: RawDataset, plans: dict | None, configurations: Iterable[str], cap_bytes: int,
             baseline: Baseline, model: dict, cpus: int, geoms: list[CaseGeometry] | None = None) -> Estimate:
    """Per-case predicted peaks, the largest cases, and the largest -np / -npfp that fit ``cap_bytes``."""
    geoms = geoms if geoms is not None else dataset_geometry(dataset)
    margin = float(model.get("margin", DEFAULT_MODEL["margin"]))
    est = Estimate(cap_bytes=int(cap_bytes), margin=margin, baseline=baseline, cpus=int(cpus))
    if not baseline.measured:
        est.notes.append("the worker baseline is a default, not measured in this image")
    from_data = sum(1 for g in geoms if g.crop_shape is not None)
    if geoms and from_data < len(geoms):
        est.notes.append(f"crop to the nonzero region and foreground fraction from the data for {from_data} of "
                         f"{len(geoms)} cases; the others from the headers only (no crop, an assumed foreground "
                         "fraction): NIfTI files the pre-flight file check has read in their current version")

    def add(phase: str, configuration: str | None, spacing) -> list[int]:
        peaks = []
        for g in geoms:
            extra = predict_case_bytes(g, phase, spacing, model)
            peak = baseline.worker_bytes + extra
            peaks.append(peak)
            row = {"case": g.case_id, "phase": phase, "configuration": configuration,
                   "predicted_peak_bytes": peak, "extra_bytes": extra}
            est.per_case.append(row)
            if max_workers_that_fit([peak - baseline.shared_bytes], baseline.main_bytes, cap_bytes, margin, 1,
                                    baseline.shared_bytes) == 0:
                est.too_large.append({k: row[k] for k in ("case", "phase", "configuration", "predicted_peak_bytes")})
        key = phase if configuration is None else configuration
        order = sorted(range(len(geoms)), key=lambda i: -peaks[i])
        est.largest[key] = [{"case": geoms[i].case_id, "predicted_peak_bytes": peaks[i]} for i in order[:5]]
        # side by side, each worker adds its peak less the shared pages the main process already maps
        return sorted((p - baseline.shared_bytes for p in peaks), reverse=True)

    fp = add("fingerprint", None, None)
    main_pool = est.main_fingerprint_pool_bytes = main_bytes_during_fingerprint_pool(geoms, baseline)
    est.max_npfp = max_workers_that_fit(fp, main_pool, cap_bytes, margin, cpus, baseline.shared_bytes)
    est.main_fingerprint_peak_bytes = predict_main_fingerprint_bytes(geoms, baseline, model)
    if est.main_fingerprint_peak_bytes * (1.0 + margin) > cap_bytes:
        est.notes.append("the main process alone is predicted to exceed the cap at the end of the fingerprint "
                         f"({format_bytes(est.main_fingerprint_peak_bytes)} with the margin: it gathers 1e8 float32 "
                         "samples per channel)")
    only_2d = bool(geoms) and all(g.is_2d for g in geoms)
    for cfg in configurations:
        if only_2d and plans is None and cfg != "2d":
            est.notes.append(f"a 2D dataset: nnU-Net plans no {cfg} (only 2d)")
            continue
        note = configuration_note(plans, cfg)
        if note:
            est.notes.append(note)
        spacing = planned_target_spacing(plans, cfg, geoms)
        if spacing is None:
            if plans is not None and cfg == "3d_lowres":
                spacing = planned_target_spacing(None, "3d_fullres", geoms)
            else:
                continue
        if plans is None and cfg == "3d_lowres":
            spacing = planned_target_spacing(None, "3d_fullres", geoms)
        if spacing is None:          # no case at all: nothing to predict
            continue
        est.target_spacings[cfg] = [None if math.isnan(s) else round(s, 6) for s in spacing]
        peaks = add("preprocessing", cfg, spacing)
        est.max_np[cfg] = max_workers_that_fit(peaks, baseline.main_bytes, cap_bytes, margin, cpus,
                                               baseline.shared_bytes)
    return est


def estimate_json(est: Estimate) -> dict:
    return {
        "cap_bytes": est.cap_bytes,
        "margin": est.margin,
        "cpus": est.cpus,
        "baseline": asdict(est.baseline),
        "per_case": list(est.per_case),
        "largest": est.largest,
        "max_np": dict(est.max_np),
        "max_npfp": est.max_npfp,
        "too_large": list(est.too_large),
        "main_fingerprint_peak_bytes": est.main_fingerprint_peak_bytes,
        "target_spacings": est.target_spacings,
        "notes": list(est.notes),
    }


def render_estimate(est: Estimate) -> str:
    lines = [f"memory cap {format_bytes(est.cap_bytes)}; safety margin {est.margin:.0%}; "
             f"per-worker baseline {format_bytes(est.baseline.worker_bytes)}, "
             f"main process {format_bytes(est.baseline.main_bytes)}"
             + ("" if est.baseline.measured else " (defaults, not measured)")]
    keys = ["fingerprint"] + [k for k in est.largest if k != "fingerprint"]
    for key in keys:
        rows = [r for r in est.per_case if (r["configuration"] or r["phase"]) == key]
        if not rows:
            continue
        title = "fingerprint" if key == "fingerprint" else f"preprocessing {key}"
        spacing = est.target_spacings.get(key)
        if spacing:
            title += " (target spacing x,y,z: " + ", ".join("own" if s is None else f"{s:g}" for s in spacing) + " mm)"
        lines.append("")
        lines.append(title)
        lines.append(f"  {'case':<24} {'predicted peak':>15} {'extra':>12}")
        for r in rows:
            lines.append(f"  {r['case']:<24} {format_bytes(r['predicted_peak_bytes']):>15} {format_bytes(r['extra_bytes']):>12}")
        top = ", ".join(f"{x['case']} ({format_bytes(x['predicted_peak_bytes'])})" for x in est.largest.get(key, [])[:3])
        lines.append(f"  largest: {top}")
        n = est.max_npfp if key == "fingerprint" else est.max_np.get(key, 0)
        flag = "-npfp" if key == "fingerprint" else "-np"
        lines.append(f"  largest {flag} that fits: {n}" + ("  (not even one worker fits)" if n == 0 else ""))
    lines.append("")
    lines.append(f"main process at the end of the fingerprint: {format_bytes(est.main_fingerprint_peak_bytes)}")
    if est.too_large:
        lines.append("too large for the cap even alone: " + ", ".join(
            f"{t['case']} ({t['configuration'] or t['phase']}, {format_bytes(t['predicted_peak_bytes'])})"
            for t in est.too_large))
    for note in est.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)
