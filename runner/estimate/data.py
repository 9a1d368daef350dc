"""The estimate's geometry with what the pre-flight file check saw of the voxels (not pure: reads its record).

:mod:`runner.estimate.model` stays pure and header-only
(:func:`~runner.estimate.model.dataset_geometry`); this module adds each
case's crop to the nonzero region and its foreground fraction, as recorded by
the file check (``runner.formats.check_cache``), for the cases whose files
were checked in their current version.  Nothing is read from the images here.
"""
from __future__ import annotations

from pathlib import Path

from runner.dataset import RawDataset
from runner.estimate.model import CaseGeometry, dataset_geometry, with_data_stats


def dataset_geometry_with_data(dataset: RawDataset, cache_dir: Path | None = None) -> list[CaseGeometry]:
    """Header geometry of every case, with the crop shape and foreground fraction where the check recorded them."""
    from runner.formats.check_cache import case_data_stats
    geoms = dataset_geometry(dataset)
    try:
        stats = case_data_stats(dataset, cache_dir)
    except (OSError, ValueError, KeyError, TypeError):
        return geoms              # an unreadable record: headers only
    return with_data_stats(geoms, stats)
