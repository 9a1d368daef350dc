"""What to run next after an OOM kill: pure, over the verdict, the options of the run and what is known
about the memory the rest of the run needs.

The choice, in one line for the user:

* the killed process ran in a pool of several workers and one worker fits the
  cap (:class:`~runner.estimate.need.MemoryNeed`, from the estimate and the
  peaks measured so far): **fewer workers**, the most the estimate says fit
  side by side (at most half as many as before).  The user's cap stays (it is
  what their machine or job has), and it is the change that finishes: more
  workers under a higher cap would be faster only on a machine with the
  memory to spare, which nnrun cannot know for a cluster job;
* one worker already, the main process, or one worker does not fit the cap
  either: **a higher cap**, the ``--mem`` that ``memory_needed`` gives (never a
  blind multiple of the old cap); a pinned pool of several workers is handed
  back to nnrun (no ``-np``/``-npfp``), whose memory-aware admission fits the
  workers to the new cap;
* without an estimate (the baseline probe failed): half the workers, or 1.5
  times the cap.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from runner.diagnosis.classify import Verdict
from runner.errors import Outcome
from runner.estimate.need import MemoryNeed
from runner.options import DEFAULT_NPFP, PreprocessOptions
from runner.units import format_bytes, format_mem_arg, parse_mem

# Without an estimate: the cap to try next after a kill with one worker.
BLIND_FACTOR = 1.5


@dataclass(frozen=True)
class Recommendation:
    text: str                          # one sentence, for the human report
    options: PreprocessOptions | None  # the options to run next (None: no command)
    mem_bytes: int | None              # a new --mem to run with (None: keep the user's)


def _fewer(current: int, fit: int | None) -> int:
    """Half the workers, or fewer when the estimate says fewer fit side by side (never 0)."""
    half = max(1, current // 2)
    return max(1, min(half, fit)) if fit is not None and fit >= 1 else half


def recommend(verdict: Verdict, phase: str | None, configuration: str | None, opts: PreprocessOptions,
              limit_bytes: int, host_mem_bytes: int | None, need: MemoryNeed | None = None,
              fit_npfp: int | None = None, fit_np: dict[str, int] | None = None) -> Recommendation | None:
    """A concrete next run after an OOM: fewer workers where that finishes, else the memory it needs.

    ``need``: the memory the phases still to run need with one worker (None: no estimate).
    ``fit_npfp`` / ``fit_np``: the largest pools the estimate fits under this cap.
    """
    if verdict.outcome is not Outcome.OOM:
        return None
    per_config = opts.workers_per_configuration()
    in_worker_pool = phase in ("verify", "fingerprint", "preprocessing")
    one_fits = need is None or need.fits(limit_bytes)
    why = f" ({need.reason()} with one worker)" if need is not None else ""
    if one_fits:
        if phase in ("verify", "fingerprint") and opts.npfp > 1:
            new_npfp = _fewer(opts.npfp, fit_npfp)
            return Recommendation(f"use fewer fingerprint workers under the same cap: -npfp {new_npfp} "
                                  f"(was {opts.npfp})", opts.with_workers(npfp=new_npfp), None)
        if phase == "preprocessing" and configuration in per_config and per_config[configuration] > 1:
            current = per_config[configuration]
            new_np = _fewer(current, (fit_np or {}).get(configuration))
            return Recommendation(f"use fewer workers for {configuration} under the same cap: -np {new_np} "
                                  f"(was {current})", opts.with_workers(configuration=configuration, np=new_np), None)
        if phase == "preprocessing" and configuration is None and any(n > 1 for n in per_config.values()):
            new = opts
            for c, n in per_config.items():
                new = new.with_workers(configuration=c, np=_fewer(n, (fit_np or {}).get(c)))
            return Recommendation("use fewer preprocessing workers under the same cap", new, None)
    # One worker already, the main process, or not even one worker fits: only memory helps.
    if need is not None:
        new_mem = max(need.mem_bytes, parse_mem(format_mem_arg(limit_bytes + 1)))
    else:
        new_mem = parse_mem(format_mem_arg(int(limit_bytes * BLIND_FACTOR)))
    where = "with one worker" if in_worker_pool else "in this phase"
    if host_mem_bytes and new_mem > host_mem_bytes:
        return Recommendation(
            f"nnU-Net needs about {format_bytes(new_mem)} {where}, more than this host's "
            f"{format_bytes(host_mem_bytes)}{why}: use a machine with more memory", None, None)
    several = opts.npfp > 1 or any(n > 1 for n in per_config.values())
    next_opts = replace(opts, np=None, npfp=DEFAULT_NPFP) if several and not one_fits else opts
    workers = "; nnrun fits the workers to it" if next_opts is not opts else ""
    if need is None:
        return Recommendation(f"raise the cap: --mem {format_mem_arg(new_mem)} (was {format_bytes(limit_bytes)}); "
                              f"nnU-Net ran out {where}", next_opts, new_mem)
    return Recommendation(f"raise the cap: --mem {format_mem_arg(new_mem)} (was {format_bytes(limit_bytes)}): "
                          f"{need.reason()}{workers}", next_opts, new_mem)
