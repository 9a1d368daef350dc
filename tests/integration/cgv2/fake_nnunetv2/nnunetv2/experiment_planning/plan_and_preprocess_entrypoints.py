"""nnUNetv2_plan_and_preprocess's entry point: its argument names, its progress lines, its phases."""
import argparse
import os

from nnunetv2.experiment_planning import plan_and_preprocess_api as api
from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
from nnunetv2.experiment_planning.experiment_planners import default_experiment_planner
from nnunetv2.paths import nnUNet_raw
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name


def extract_fingerprints(dataset_ids, num_processes: int, check_integrity: bool) -> None:
    for d in dataset_ids:
        name = maybe_convert_to_dataset_name(d)
        if check_integrity:
            api.verify_dataset_integrity(os.path.join(nnUNet_raw, name), num_processes)
        DatasetFingerprintExtractor(name, num_processes).run()


def plan_experiments(dataset_ids, plans_name: str = "nnUNetPlans") -> str:
    for d in dataset_ids:
        default_experiment_planner.plan_experiment(maybe_convert_to_dataset_name(d), plans_name)
    return plans_name


def plan_and_preprocess_entry() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-d", nargs="+", type=int, required=True)
    parser.add_argument("-npfp", type=int, default=8)
    parser.add_argument("-np", nargs="+", type=int, default=None)
    parser.add_argument("-c", nargs="+", default=None)
    parser.add_argument("--verify_dataset_integrity", action="store_true")
    parser.add_argument("--no_pp", action="store_true")
    parser.add_argument("--clean", action="store_true")
    parser.add_argument("--verbose", action="store_true")
    args, _ = parser.parse_known_args()
    print("Fingerprint extraction...", flush=True)
    extract_fingerprints(args.d, args.npfp, args.verify_dataset_integrity)
    print("Experiment planning...", flush=True)
    plans = plan_experiments(args.d)
    if not args.no_pp:
        print("Preprocessing...", flush=True)
        raise NotImplementedError(f"the stand-in does not preprocess ({plans}); run with --no_pp")
