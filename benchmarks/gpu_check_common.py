"""What every ``gpu_check.sh`` stage shares: smoke mode, the environment record, running a sub-command under the
stage's time budget, and the stage's record (``Stage``) written incrementally to ``OUTDIR/<stage>.json``.

Each stage is a small program ``benchmarks/gpu_check_<stage>.py OUTDIR --budget SECONDS [--started EPOCH]``
(budgets: ``gpu_check_plan.py``). Its JSON is written at the start (status "running": a stage killed by SIGKILL
leaves that), again after each unit of work (a test chunk, a measured cell), and at the end with status "ok",
"failed" (and why), or "cut": the budget stopped planned work before it was done (what was not reached is
listed), or the backstop timeout's SIGTERM arrived. Every JSON carries the device, driver, library versions and
the command.

Smoke mode (no CUDA device, or ``HRNET_FAST_GPU_CHECK_SMOKE=1``): the same stages on the CPU at tiny sizes with
the budgets scaled (``gpu_check_plan.SMOKE_SCALE``), so the test suite keeps the script from rotting. Smoke figures
mean nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Optional

import torch

from gpu_check_plan import smoke_mode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = smoke_mode()
DEVICE = torch.device("cpu" if SMOKE else "cuda")
if SMOKE:
    # One thread: on a 2-core machine shared with other work, OpenMP's spinning threads made a 30 ms forward of
    # the tiny smoke models take seconds; smoke figures mean nothing, but the stage must keep its pace.
    torch.set_num_threads(1)


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


def run_command(cmd: List[str], timeout_s: float, env: Optional[Dict[str, str]] = None,
                keep_output: bool = False) -> Dict[str, Any]:
    """Runs ``cmd`` from the repository root with a timeout; its output goes to our stdout (the check's log), its
    last 3000 characters into the record (all of it under "output" with ``keep_output``). The command runs in a
    process group of its own, killed whole on the timeout (or when this stage is cut): compute-sanitizer's
    application and pip's compilers are grandchildren, which must not outlive the stage."""
    begin = time.perf_counter()
    record: Dict[str, Any] = {"command": " ".join(shlex.quote(c) for c in cmd), "timeout_s": round(timeout_s)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=max(timeout_s, 1))
        record.update(rc=proc.returncode)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        record.update(rc=None, timed_out=True)
    except BaseException:  # StageCut: the group goes with the stage
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    record["output_tail"] = output[-3000:]
    sys.stdout.write(output)
    if keep_output:
        record["output"] = output
    record["wall_s"] = round(time.perf_counter() - begin, 1)
    sys.stdout.flush()
    return record


def _write(path: str, record: Dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1, default=str)
        f.write("\n")
    os.replace(tmp, path)  # a reader (or a kill) never sees half a file


EXIT_CODES = {"ok": 0, "failed": 1, "cut": 2}
RESERVE_S = 3.0  # of a stage's budget, kept to write its record and exit


class StageCut(BaseException):
    """Raised in the stage's main thread when the backstop's SIGTERM arrives. A BaseException, so that no
    ``except Exception`` between here and ``stage_main`` (a peer's error handling, a library's) swallows it."""


class Stage:
    """One stage's run: its budget, and its record, written to ``OUTDIR/<stage>.json`` at the start and again
    whenever ``save()`` is called (after each test chunk, each measured cell), so a stage cut or killed still
    leaves what it did. Statuses: running (at start; left so only by a SIGKILL), ok, failed (``fail()``, or an
    exception), cut (``cut()``: the budget stopped planned work; or the backstop's SIGTERM)."""

    def __init__(self, name: str, outdir: str, budget_s: float, started: float):
        self.name = name
        self.path = os.path.join(outdir, f"{name}.json")
        self.budget_s = budget_s
        self.started = started
        self.deadline = started + budget_s  # wall clock: the budget counts from the process's launch
        self.record: Dict[str, Any] = {
            "stage": name, "status": "running", "smoke": SMOKE, "budget_s": budget_s,
            "command": " ".join(shlex.quote(a) for a in [sys.executable] + sys.argv),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "environment": environment(),
            "failures": [], "cut": None,
        }

    def remaining(self, reserve_s: float = RESERVE_S) -> float:
        """Seconds left in the budget, keeping ``reserve_s`` to write the record."""
        return max(self.deadline - time.time() - reserve_s, 0.0)

    def fail(self, why: str) -> None:
        self.record["failures"].append(why)

    def cut(self, why: str) -> None:
        """Planned work the budget did not reach (the record lists it); the stage ends 'cut' unless it failed."""
        self.record["cut"] = why if self.record["cut"] is None else f"{self.record['cut']}; {why}"

    def elapsed(self) -> float:
        return round(time.time() - self.started, 1)

    def save(self) -> None:
        self.record["wall_s"] = self.elapsed()
        _write(self.path, self.record)

    def finish(self, error: Optional[str] = None) -> int:
        if error is not None:
            self.fail(error)
        status = "failed" if self.record["failures"] else "cut" if self.record["cut"] else "ok"
        self.record["status"] = status
        self.save()
        print(f"gpu_check: stage {self.name}: {status} in {self.record['wall_s']} s", flush=True)
        return EXIT_CODES[status]


def _on_sigterm(signum, frame):
    raise StageCut("killed by the backstop timeout (SIGTERM) after its budget")


def stage_main(name: str, body: Callable[[Stage, argparse.Namespace], None],
               add_arguments: Optional[Callable[[argparse.ArgumentParser], None]] = None) -> int:
    """Parses ``OUTDIR --budget S [--started EPOCH]``, runs ``body(stage, args)`` and writes the record; exit
    status 0 ok, 1 failed, 2 cut. ``--started`` is when the shell launched the process (so interpreter start-up and
    the torch import count against the budget); default: now."""
    parser = argparse.ArgumentParser(description=f"gpu_check stage '{name}'")
    parser.add_argument("outdir")
    parser.add_argument("--budget", type=float, required=True, help="seconds this stage may take")
    parser.add_argument("--started", type=float, default=None, help="epoch seconds the stage was launched")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args()
    os.makedirs(args.outdir, exist_ok=True)
    stage = Stage(name, args.outdir, args.budget, args.started if args.started is not None else time.time())
    signal.signal(signal.SIGTERM, _on_sigterm)
    stage.save()
    error = None
    try:
        body(stage, args)
    except StageCut as e:
        stage.cut(str(e))
    except Exception:  # the stage failed; the record says how, and the next stage still runs
        error = traceback.format_exc()[-4000:]
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return stage.finish(error)
