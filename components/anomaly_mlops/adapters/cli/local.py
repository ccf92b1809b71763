"""``anomaly-mlops run --local``: the whole retraining flow on this machine."""

from __future__ import annotations

from pathlib import Path

from anomaly_mlops.adapters.cli.model import _add_gate_flags, _gates_from
from anomaly_mlops.adapters.cli.parsing import SubParsers
from anomaly_mlops.errors import AnomalyMLOpsError


def _seconds_since_process_start() -> float | None:
    """Linux: how long this process has run (interpreter start and imports included)."""
    import os

    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
            return float(uptime.read().split()[0]) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def cmd_run(args) -> dict:
    import time

    started = time.perf_counter()
    from anomaly_mlops.adapters.local_run import LocalRunConfig, run_local

    if not args.local:
        raise AnomalyMLOpsError("only --local runs are done by this command; on a cluster submit the KFP pipeline")
    config = LocalRunConfig(
        workdir=Path(args.workdir),
        rows=args.rows,
        seed=args.seed,
        gates=_gates_from(args),
        import_seconds=_seconds_since_process_start() or time.perf_counter() - started,
    )
    return run_local(config)


def register(sub: SubParsers) -> None:

    p = sub.add_parser("run", help="the whole retraining flow")
    p.add_argument("--local", action="store_true", help="on embedded S3 and a local model server")
    p.add_argument("--workdir", default="runs/local", help="each run writes <workdir>/<UTC time>/")
    p.add_argument("--rows", type=int, default=20_160, help="synthetic rows (one a minute)")
    p.add_argument("--seed", type=int, default=42, help="synthetic data seed")
    _add_gate_flags(p)
    p.set_defaults(func=cmd_run)
