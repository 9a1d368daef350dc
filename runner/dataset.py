"""Raw nnU-Net v2 dataset discovery and validation (pure: reads files under a root path).

Cases are enumerated exactly like nnU-Net 2.8.1 does it
(``nnunetv2.utilities.utils.get_filenames_of_train_images_and_targets``):

* If dataset.json has an explicit ``dataset`` key, its entries are the cases,
  in the JSON's order; image/label paths are relative to the dataset folder
  (after ``$VAR`` expansion) unless absolute.  imagesTr/labelsTr need not exist.
* Otherwise every file in ``imagesTr`` ending in ``file_ending`` is a channel
  file ``CASE_XXXX<file_ending>``; the case ids are the sorted unique names with
  the last ``len(file_ending) + 5`` characters cut off, and the label is
  ``labelsTr/CASE<file_ending>``.

Validation is stricter than nnU-Net's own (which mostly only runs with
``--verify_dataset_integrity``): every declared channel file and label must
exist, channel files must carry a 4-digit channel index below the number of
channels, and numTraining must match.  Every error is a one-line
:class:`BadInputError` that starts with the dataset folder name.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from runner.errors import BadInputError

MIN_DATASET_ID = 1
MAX_DATASET_ID = 999
_DATASET_DIR_RE = re.compile(r"Dataset(\d{3})")
_DATASET_NAME_RE = re.compile(r"Dataset(\d{3})(_.*)?")
_MAX_LISTED = 5
# Endings nnU-Net may read with NaturalImage2DIO, where one file can hold several (colour) channels.
COLOUR_ENDINGS = (".png", ".bmp", ".tif")


@dataclass(frozen=True)
class Case:
    case_id: str
    images: tuple[str, ...]  # channel files, channel 0 first
    label: str


@dataclass(frozen=True)
class RawDataset:
    dataset_id: int
    name: str  # folder name, e.g. Dataset501_Demo
    path: str  # absolute path of the dataset folder
    dataset_json: dict
    file_ending: str
    num_channels: int
    cases: tuple[Case, ...]  # in the order nnU-Net processes them
    # Headers read once per run: the pre-flight geometry check and the estimate both ask for every case's
    # (runner.formats.headers.case_info fills it; 1,000 files, ~0.7 s, on a 500-case dataset).
    header_memo: dict = field(default_factory=dict, compare=False, repr=False)

    def all_files(self) -> tuple[str, ...]:
        """Every image and label file, case by case (images first, then the label)."""
        return tuple(f for c in self.cases for f in (*c.images, c.label))


# --------------------------------------------------------------------------- ids and folders

def parse_dataset_id(text) -> int:
    """Accept ``501``, ``"501"`` or ``"Dataset501_Name"`` (what nnU-Net's ``-d`` accepts)."""
    if isinstance(text, bool):
        raise BadInputError(f"invalid dataset id {text!r}")
    if isinstance(text, int):
        value = text
    else:
        s = str(text).strip()
        m = _DATASET_NAME_RE.fullmatch(s)
        if m:
            value = int(m.group(1))
        elif re.fullmatch(r"[+-]?\d+", s):
            value = int(s)
        else:
            raise BadInputError(f"invalid dataset id {str(text)!r}",
                                hint="give a number such as 501 or a folder name such as Dataset501_Name")
    _check_id_range(value)
    return value


def _check_id_range(dataset_id: int) -> None:
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, int) \
            or not MIN_DATASET_ID <= dataset_id <= MAX_DATASET_ID:
        raise BadInputError(f"dataset id {dataset_id!r} is out of range: nnU-Net dataset ids are "
                            f"{MIN_DATASET_ID}..{MAX_DATASET_ID}")


def _check_raw_root(raw_root) -> Path:
    root = Path(raw_root)
    hint = "pass --raw DIR or set the nnUNet_raw environment variable"
    if not root.exists():
        raise BadInputError(f"raw data folder {root} does not exist", hint=hint)
    if not root.is_dir():
        raise BadInputError(f"raw data folder {root} is not a directory", hint=hint)
    return root


def dataset_ids_under(raw_root) -> list[int]:
    """The dataset ids of all ``DatasetXXX*`` folders directly under raw_root, sorted."""
    ids = set()
    for entry in Path(raw_root).iterdir():
        m = _DATASET_DIR_RE.match(entry.name)
        if m and entry.is_dir():
            ids.add(int(m.group(1)))
    return sorted(ids)


def find_dataset_folder(raw_root, dataset_id: int) -> Path:
    """The single ``DatasetXXX_*`` folder for ``dataset_id`` under raw_root.

    Candidates are matched like nnU-Net does (every directory whose name starts
    with ``Dataset%03d``), so an ambiguity nnU-Net would refuse is refused here.
    """
    root = _check_raw_root(raw_root)
    _check_id_range(dataset_id)
    prefix = f"Dataset{dataset_id:03d}"
    candidates = sorted(e for e in root.iterdir() if e.name.startswith(prefix) and e.is_dir())
    if not candidates:
        found = ", ".join(f"{i:03d}" for i in dataset_ids_under(root)) or "none"
        raise BadInputError(f"no dataset with id {dataset_id} under {root} (found: {found})",
                            hint=f"expected a folder named {prefix}_<Name>")
    if len(candidates) > 1:
        names = ", ".join(c.name for c in candidates)
        raise BadInputError(f"more than one folder for dataset id {dataset_id} under {root}: {names}",
                            hint="nnU-Net needs exactly one; rename or remove the others")
    return candidates[0]


def check_dataset_name(text, folder: Path) -> None:
    """``-d DatasetXXX_Name`` must name the folder found for id XXX (the folder is found by its id).

    A plain id (``501``) or ``DatasetXXX`` without a name matches any folder of that id.
    """
    if not isinstance(text, str):
        return
    given = text.strip()
    m = _DATASET_NAME_RE.fullmatch(given)
    if m and m.group(2) and given != folder.name:
        raise BadInputError(f"-d {given}: there is no folder {given} under {folder.parent}; the folder of dataset "
                            f"{m.group(1)} there is {folder.name}",
                            hint=f"give -d {folder.name} or -d {int(m.group(1))}")


# --------------------------------------------------------------------------- dataset.json

def _load_dataset_json(folder: Path, name: str) -> dict:
    path = folder / "dataset.json"
    if not path.is_file():
        raise BadInputError(f"{name}: dataset.json not found in {folder}",
                            hint="every nnU-Net raw dataset needs one; see nnU-Net's dataset_format docs")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BadInputError(f"{name}: dataset.json cannot be read: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadInputError(f"{name}: dataset.json is not valid JSON: {e.msg} at line {e.lineno} "
                            f"column {e.colno}") from None
    if not isinstance(data, dict):
        raise BadInputError(f"{name}: dataset.json must hold a JSON object, not {type(data).__name__}")
    return data


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _validate_keys(dj: dict, name: str) -> tuple[int, str]:
    """Check the keys nnU-Net needs; return (num_channels, file_ending)."""
    def bad(msg: str) -> BadInputError:
        return BadInputError(f"{name}: dataset.json: {msg}")

    # nnU-Net prefers channel_names and falls back to the legacy 'modality'.
    channel_key = "channel_names" if "channel_names" in dj else ("modality" if "modality" in dj else None)
    if channel_key is None:
        raise bad("missing key 'channel_names'")
    channels = dj[channel_key]
    if not isinstance(channels, dict) or not channels:
        raise bad(f"'{channel_key}' must be a non-empty object like {{\"0\": \"CT\"}}")

    for key in ("labels", "numTraining", "file_ending"):
        if key not in dj:
            raise bad(f"missing key '{key}'")
    _validate_labels(dj, bad)
    if not _is_int(dj["numTraining"]) or dj["numTraining"] < 0:
        raise bad(f"'numTraining' must be a non-negative integer, got {dj['numTraining']!r}")
    ending = dj["file_ending"]
    if not isinstance(ending, str) or not ending.startswith(".") or len(ending) < 2:
        raise bad(f"'file_ending' must be a string starting with '.', like \".nii.gz\", got {ending!r}")
    return len(channels), ending


def _validate_labels(dj: dict, bad) -> None:
    """The checks nnU-Net's LabelManager / verify_dataset_integrity make on 'labels'."""
    labels = dj["labels"]
    if not isinstance(labels, dict) or not labels:
        raise bad("'labels' must be a non-empty object like {\"background\": 0, \"organ\": 1}")
    if "background" not in labels:
        raise bad("'labels' must declare \"background\": 0")
    if not _is_int(labels["background"]) or labels["background"] != 0:
        raise bad(f"'labels': background must be 0, got {labels['background']!r}")
    values: set[int] = set()
    has_regions = False
    for key, value in labels.items():
        items = value if isinstance(value, list) else [value]
        if not items or not all(_is_int(v) for v in items):
            raise bad(f"'labels': value of {key!r} must be an integer (or a list of integers for regions), "
                      f"got {value!r}")
        if key == "ignore":
            if isinstance(value, list):
                raise bad("'labels': the ignore label must be an integer, not a list")
            continue
        has_regions |= isinstance(value, list) and len(value) > 1
        values.update(items)
    expected = list(range(len(values)))
    if sorted(values) != expected:
        raise bad(f"'labels': label values must be consecutive 0, 1, 2, ...; got {sorted(values)}")
    if "ignore" in labels and labels["ignore"] != max(values) + 1:
        raise bad(f"'labels': the ignore label must be the highest value ({max(values) + 1}), "
                  f"got {labels['ignore']}")
    if has_regions and dj.get("regions_class_order") is None:
        raise bad("region-based 'labels' need a 'regions_class_order' key")


# --------------------------------------------------------------------------- cases

def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def _files_with_ending(folder: Path, ending: str) -> list[str]:
    # batchgenerators.subfiles: regular files (symlinks followed) whose name ends in ending.
    return sorted(e.name for e in folder.iterdir() if e.name.endswith(ending) and e.is_file())


def _cases_from_folders(folder: Path, name: str, ending: str, num_channels: int) -> list[Case]:
    images_dir, labels_dir = folder / "imagesTr", folder / "labelsTr"
    for d in (images_dir, labels_dir):
        if not d.is_dir():
            raise BadInputError(f"{name}: folder {d.name} not found in {folder}",
                                hint="nnU-Net expects imagesTr/ and labelsTr/ (or a 'dataset' key in dataset.json)")
    files = _files_with_ending(images_dir, ending)
    pattern = re.compile(r"(.+)_(\d{4})" + re.escape(ending))
    bad_names = [f for f in files if not pattern.fullmatch(f)]
    if bad_names:
        raise BadInputError(f"{name}: imagesTr/{bad_names[0]} has no 4-digit channel suffix "
                            f"(expected CASE_0000{ending})"
                            + (f"; {len(bad_names) - 1} more like it" if len(bad_names) > 1 else ""))
    present = set(files)
    # nnU-Net: identifiers = np.unique([f[:-(len(ending) + 5)] for f in files]) (sorted).
    identifiers = sorted({f[:-(len(ending) + 5)] for f in files})

    def channel(file_name: str) -> int:
        match = pattern.fullmatch(file_name)
        assert match is not None        # files were filtered by this pattern
        return int(match.group(2))

    extra = [f for f in files if channel(f) >= num_channels]
    if extra:
        raise BadInputError(f"{name}: imagesTr/{extra[0]} is channel {channel(extra[0])} "
                            f"but dataset.json declares {num_channels} channel(s) "
                            f"(0000..{num_channels - 1:04d})")
    missing: list[str] = []
    cases = []
    for cid in identifiers:
        images = []
        wanted = num_channels
        if ending.lower() in COLOUR_ENDINGS:
            # one RGB(A) file gives nnU-Net's NaturalImage2DIO 3 (4) channels: the files present, from _0000 on,
            # must hold the declared channels (the pre-flight counts them from the headers)
            wanted = max(1, sum(1 for c in range(num_channels) if f"{cid}_{c:04d}{ending}" in present))
        for c in range(wanted):
            fname = f"{cid}_{c:04d}{ending}"
            if fname not in present:
                missing.append(f"imagesTr/{fname}")
            images.append(str(images_dir / fname))
        label = labels_dir / f"{cid}{ending}"
        if not label.is_file():
            missing.append(f"labelsTr/{label.name}")
        cases.append(Case(cid, tuple(images), str(label)))
    if missing:
        raise BadInputError(f"{name}: missing file{'s' if len(missing) > 1 else ''} "
                            f"{_listing(missing)} in {folder}")
    return cases


def _resolve(folder: Path, entry: str) -> str:
    expanded = os.path.expandvars(entry)
    return expanded if os.path.isabs(expanded) else os.path.abspath(os.path.join(folder, expanded))


def _cases_from_json(folder: Path, name: str, entries, num_channels: int) -> list[Case]:
    if not isinstance(entries, dict):
        raise BadInputError(f"{name}: dataset.json: 'dataset' must be an object mapping case ids to "
                            f"{{\"images\": [...], \"label\": ...}}")
    cases, missing = [], []
    for cid, entry in entries.items():  # nnU-Net keeps the JSON order here
        if not (isinstance(entry, dict) and isinstance(entry.get("images"), list)
                and all(isinstance(i, str) for i in entry["images"]) and isinstance(entry.get("label"), str)):
            raise BadInputError(f"{name}: dataset.json: 'dataset' entry {cid!r} must be "
                                f"{{\"images\": [file, ...], \"label\": file}}")
        if len(entry["images"]) != num_channels:
            raise BadInputError(f"{name}: dataset.json: case {cid!r} lists {len(entry['images'])} image file(s) "
                                f"but there are {num_channels} channel(s)")
        images = tuple(_resolve(folder, i) for i in entry["images"])
        label = _resolve(folder, entry["label"])
        missing += [p for p in (*images, label) if not os.path.isfile(p)]
        cases.append(Case(str(cid), images, label))
    if missing:
        raise BadInputError(f"{name}: missing file{'s' if len(missing) > 1 else ''} {_listing(missing)} "
                            f"(listed in dataset.json 'dataset')")
    return cases


def load_raw_dataset(raw_root, dataset_id) -> RawDataset:
    """Find, read and validate raw dataset ``dataset_id`` under ``raw_root``.

    ``dataset_id`` is an id or ``-d`` as the user gave it: a ``DatasetXXX_Name``
    must then be the name of the folder found for XXX (:func:`check_dataset_name`).
    """
    given = dataset_id
    dataset_id = parse_dataset_id(dataset_id)
    folder = Path(os.path.abspath(find_dataset_folder(raw_root, dataset_id)))
    check_dataset_name(given, folder)
    name = folder.name
    dj = _load_dataset_json(folder, name)
    num_channels, ending = _validate_keys(dj, name)
    if "dataset" in dj:
        cases = _cases_from_json(folder, name, dj["dataset"], num_channels)
        where = "dataset.json 'dataset'"
    else:
        cases = _cases_from_folders(folder, name, ending, num_channels)
        where = "imagesTr"
    if not cases:
        raise BadInputError(f"{name}: no training cases found in {where}",
                            hint=f"expected image files named like CASE_0000{ending}")
    if dj["numTraining"] != len(cases):
        raise BadInputError(f"{name}: dataset.json says numTraining is {dj['numTraining']} but "
                            f"{len(cases)} cases were found in {where}")
    return RawDataset(
        dataset_id=dataset_id,
        name=name,
        path=str(folder),
        dataset_json=dj,
        file_ending=ending,
        num_channels=num_channels,
        cases=tuple(cases),
    )
