"""What the measurement scripts in benchmarks/ (cpu_overhead, cpu_conv_call_cost, cpu_page_faults) share: the
command line their results record, and printing the result as JSON and writing it with ``--json PATH``
(``summarize.py`` lists such files by their command)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Dict, Optional


# Environment variables that change what a script measures, recorded in front of its command.
_RECORDED_ENV = ("HRNET_FAST_", "ONEDNN_", "ATEN_CPU_CAPABILITY", "MALLOC_")


def command() -> str:
    """The command line as run from the repository root, for the result to record (``[VAR=value ...] python
    benchmarks/<script>.py ...``): the settings that change the measurement included, whatever the working
    directory was."""
    root = Path(__file__).resolve().parent.parent

    def from_root(path: str) -> str:
        full = Path(path).resolve()
        return str(full.relative_to(root)) if full.is_relative_to(root) else str(full)

    args = [from_root(sys.argv[0]), *sys.argv[1:]]
    if "--json" in sys.argv[:-1]:
        i = sys.argv.index("--json")
        args[i + 1] = from_root(sys.argv[i + 1])
    env = [f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith(_RECORDED_ENV)]
    return " ".join(env + ["python"] + args)


def emit(result: Dict, path: Optional[str], show: bool = True) -> None:
    """Prints ``result`` as JSON (unless ``show`` is False) and writes it to ``path`` when one is given."""
    text = json.dumps(result, indent=1)
    if show:
        print(text)
    if path:
        with open(path, "w") as f:
            f.write(text + "\n")
