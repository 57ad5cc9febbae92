"""What every ``gpu_check.sh`` stage shares: smoke mode, the environment record, running a sub-command under the
stage's time budget, and writing the stage's JSON.

Each stage is a small program ``benchmarks/gpu_check_<stage>.py OUTDIR --budget SECONDS``. It writes
``OUTDIR/<stage>.json`` twice: at its start (status "running", so a stage killed by its timeout still leaves a
record saying so) and when it ends (status "ok" or "failed", the figures, the wall time). Every JSON carries the
device, driver, library versions and the command.

Smoke mode (no CUDA device, or ``HRNET_FAST_GPU_CHECK_SMOKE=1``): the same stages on the CPU at tiny sizes, so the
test suite keeps the script from rotting. Smoke figures mean nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Optional

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.environ.get("HRNET_FAST_GPU_CHECK_SMOKE") == "1" or not torch.cuda.is_available()
DEVICE = torch.device("cpu" if SMOKE else "cuda")


def _driver() -> Optional[str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> Dict[str, Any]:
    """Device, driver and versions of what the figures depend on."""
    import importlib.metadata as md

    def version(pkg: str) -> Optional[str]:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None
    cuda = DEVICE.type == "cuda"
    return {
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({platform.processor() or platform.machine()})",
        "driver": _driver() if cuda else None,
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "triton": version("triton"), "timm": version("timm"), "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "smoke": SMOKE,
    }


def stats(samples_ms: List[float]) -> Dict[str, float]:
    """median / p20 / p80 of timings in ms (hrnet_fast.timing's definition)."""
    from hrnet_fast.timing import TimingStats
    return TimingStats.from_samples(samples_ms).as_dict()


def run_command(cmd: List[str], timeout_s: float, env: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Runs ``cmd`` from the repository root with a timeout; its output goes to our stdout (the check's log)."""
    begin = time.perf_counter()
    record: Dict[str, Any] = {"command": " ".join(shlex.quote(c) for c in cmd), "timeout_s": round(timeout_s)}
    try:
        done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, timeout=max(timeout_s, 1),
                              capture_output=True, text=True)
        record.update(rc=done.returncode, output_tail=(done.stdout + done.stderr)[-3000:])
        sys.stdout.write(done.stdout + done.stderr)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"") + (e.stderr or b"")
        record.update(rc=None, timed_out=True,
                      output_tail=(out.decode(errors="replace") if isinstance(out, bytes) else out)[-3000:])
    record["wall_s"] = round(time.perf_counter() - begin, 1)
    sys.stdout.flush()
    return record


def _write(path: str, record: Dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1, default=str)
        f.write("\n")
    os.replace(tmp, path)


def stage_main(stage: str, body: Callable[[argparse.Namespace], Dict[str, Any]]) -> int:
    """Parses ``OUTDIR --budget S``, runs ``body`` and writes ``OUTDIR/<stage>.json``; exit 0 when the stage
    passed, 1 when it failed (the JSON says why)."""
    parser = argparse.ArgumentParser(description=f"gpu_check stage '{stage}'")
    parser.add_argument("outdir")
    parser.add_argument("--budget", type=float, default=120.0, help="seconds this stage may take")
    args = parser.parse_args()
    args.deadline = time.monotonic() + args.budget
    os.makedirs(args.outdir, exist_ok=True)
    path = os.path.join(args.outdir, f"{stage}.json")
    record: Dict[str, Any] = {
        "stage": stage, "status": "running", "smoke": SMOKE, "budget_s": args.budget,
        "command": " ".join(shlex.quote(a) for a in [sys.executable] + sys.argv),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "environment": environment(),
    }
    _write(path, record)
    begin = time.perf_counter()
    try:
        record.update(body(args))
        record["status"] = record.get("status_override", "ok")
    except Exception:  # the stage failed; the record says how, and the next stage still runs
        record.update(status="failed", error=traceback.format_exc()[-4000:])
    record.pop("status_override", None)
    record["wall_s"] = round(time.perf_counter() - begin, 1)
    _write(path, record)
    print(f"gpu_check: stage {stage}: {record['status']} in {record['wall_s']} s", flush=True)
    return 0 if record["status"] == "ok" else 1


def remaining(args: argparse.Namespace, reserve_s: float = 5.0) -> float:
    """Seconds left in this stage's budget, keeping ``reserve_s`` to write the JSON."""
    return max(args.deadline - time.monotonic() - reserve_s, 0.0)
