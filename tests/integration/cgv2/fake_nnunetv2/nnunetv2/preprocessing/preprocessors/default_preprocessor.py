"""DefaultPreprocessor: the stand-in runs with --no_pp only (the agent wraps these names)."""


class DefaultPreprocessor:
    def __init__(self, verbose: bool = True):
        self.verbose = verbose

    def run_case_save(self, output_filename_truncated, image_files, seg_file, *args, **kwargs):
        raise NotImplementedError("the cgroup v2 stand-in for nnU-Net only extracts fingerprints and plans (--no_pp)")

    def run(self, dataset_name_or_id, configuration_name, plans_identifier, num_processes):
        raise NotImplementedError("the cgroup v2 stand-in for nnU-Net only extracts fingerprints and plans (--no_pp)")
