"""What the measurement scripts in benchmarks/ (cpu_overhead, cpu_conv_call_cost, cpu_page_faults) share: the
command line their results record, and printing the result as JSON and writing it with ``--json PATH``
(``summarize.py`` lists such files by their command)."""
from __future__ import annotations

import json
import sys
from typing import Dict, Optional


def command() -> str:
    """The command line as run, for the result to record (``python benchmarks/<script>.py ...``)."""
    return " ".join(["python"] + sys.argv)


def emit(result: Dict, path: Optional[str], show: bool = True) -> None:
    """Prints ``result`` as JSON (unless ``show`` is False) and writes it to ``path`` when one is given."""
    text = json.dumps(result, indent=1)
    if show:
        print(text)
    if path:
        with open(path, "w") as f:
            f.write(text + "\n")
