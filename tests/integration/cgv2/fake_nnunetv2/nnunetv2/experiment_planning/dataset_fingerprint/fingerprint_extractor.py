"""DatasetFingerprintExtractor with nnU-Net 2.x's pool: spawn workers, one task per case, a dead worker is fatal."""
import json
import multiprocessing
import os
import time

from nnunetv2 import fake
from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name


def save_json(obj, file: str, sort_keys: bool = True) -> None:
    with open(file, "w") as fh:
        json.dump(obj, fh, sort_keys=sort_keys, indent=4)


class DatasetFingerprintExtractor:
    def __init__(self, dataset_name_or_id, num_processes: int = 8, verbose: bool = False):
        self.dataset_name = maybe_convert_to_dataset_name(dataset_name_or_id)
        self.input_folder = os.path.join(nnUNet_raw, self.dataset_name)
        self.num_processes = num_processes

    @staticmethod
    def analyze_case(image_files, segmentation_file, reader_writer_class=None, num_samples: int = 10000):
        case = os.path.basename(segmentation_file).split(".")[0]
        return {"case": case, "bytes": fake.behave(os.path.dirname(os.path.dirname(segmentation_file)), case)}

    def run(self, overwrite_existing: bool = False) -> dict:
        labels = os.path.join(self.input_folder, "labelsTr")
        files = sorted(f for f in os.listdir(labels) if not f.startswith("."))
        tasks = [([os.path.join(self.input_folder, "imagesTr", f.replace(".nii.gz", "_0000.nii.gz"))],
                  os.path.join(labels, f), None, 10000) for f in files]
        out_dir = os.path.join(nnUNet_preprocessed, self.dataset_name)
        os.makedirs(out_dir, exist_ok=True)
        with multiprocessing.get_context("spawn").Pool(self.num_processes) as p:
            r = [p.starmap_async(DatasetFingerprintExtractor.analyze_case, (t,)) for t in tasks]
            remaining = list(range(len(tasks)))
            workers = list(p._pool)
            while remaining:
                if not all(j.is_alive() for j in workers):
                    raise RuntimeError("Some background worker is 6 feet under. Yuck. \n"
                                       "OK jokes aside.\n"
                                       "One of your background processes is missing. This could be because of "
                                       "an error (look for an error message) or because it was killed "
                                       "by your OS due to running out of RAM. If you don't see "
                                       "an error message, out of RAM is likely the problem. In that case "
                                       "reducing the number of workers might help")
                done = [i for i in remaining if r[i].ready()]
                for i in done:
                    remaining.remove(i)
                    print(f"Extracting dataset fingerprint: {int(100 * (len(tasks) - len(remaining)) / len(tasks))}%|"
                          f"##| {len(tasks) - len(remaining)}/{len(tasks)}", flush=True)
                time.sleep(0.1)
            results = [x.get()[0] for x in r]
        fingerprint = {"cases": {x["case"]: x["bytes"] for x in results}}
        save_json(fingerprint, os.path.join(out_dir, "dataset_fingerprint.json"))
        return fingerprint
