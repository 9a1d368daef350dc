"""What to run next after an OOM kill: pure, over the verdict and the options of the run."""
from __future__ import annotations

from dataclasses import dataclass

from runner.diagnosis.classify import Verdict
from runner.errors import Outcome
from runner.options import PreprocessOptions
from runner.units import format_bytes, format_mem_arg, parse_mem


@dataclass(frozen=True)
class Recommendation:
    text: str                          # one sentence, for the human report
    options: PreprocessOptions | None  # the options to run next (None: no command)
    mem_bytes: int | None              # a new --mem to run with (None: keep the user's)


def recommend(verdict: Verdict, phase: str | None, configuration: str | None, opts: PreprocessOptions,
              limit_bytes: int, host_mem_bytes: int | None) -> Recommendation | None:
    """A concrete next run after an OOM: fewer workers where that helps, else more memory."""
    if verdict.outcome is not Outcome.OOM:
        return None
    per_config = opts.workers_per_configuration()
    in_worker_pool = phase in ("verify", "fingerprint", "preprocessing")
    if phase in ("verify", "fingerprint") and opts.npfp > 1:
        new_npfp = max(1, opts.npfp // 2)
        return Recommendation(f"use fewer fingerprint workers: -npfp {new_npfp} (was {opts.npfp})",
                              opts.with_workers(npfp=new_npfp), None)
    if phase == "preprocessing" and configuration in per_config and per_config[configuration] > 1:
        current = per_config[configuration]
        new_np = max(1, current // 2)
        return Recommendation(f"use fewer workers for {configuration}: -np {new_np} (was {current})",
                              opts.with_workers(configuration=configuration, np=new_np), None)
    if phase == "preprocessing" and configuration is None and any(n > 1 for n in per_config.values()):
        new = opts
        for c, n in per_config.items():
            new = new.with_workers(configuration=c, np=max(1, n // 2))
        return Recommendation("use fewer preprocessing workers", new, None)
    # One worker already (or the main process in planning): only memory helps.
    new_mem = int(limit_bytes * 1.5)
    mem_arg_bytes = parse_mem(format_mem_arg(new_mem))
    where = "with one worker" if in_worker_pool else "in this phase"
    if host_mem_bytes and mem_arg_bytes > host_mem_bytes:
        return Recommendation(
            f"nnU-Net needs more than the {format_bytes(limit_bytes)} cap {where}, and 1.5x that is more "
            f"than this host's {format_bytes(host_mem_bytes)}: use a machine with more memory", None, None)
    return Recommendation(f"raise the cap: --mem {format_mem_arg(new_mem)} (was {format_bytes(limit_bytes)}); "
                          f"nnU-Net ran out {where}", opts, mem_arg_bytes)
