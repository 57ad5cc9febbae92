"""Writes OUTDIR/summary.json (each stage's status and wall time) and prints it as a short table."""
from __future__ import annotations

import json
import os
import sys

STAGES = ("build", "tests", "sanitizer", "latency", "ops")


def main(outdir: str) -> int:
    rows = {}
    for stage in STAGES:
        path = os.path.join(outdir, f"{stage}.json")
        try:
            with open(path) as f:
                rec = json.load(f)
            rows[stage] = {"status": rec.get("status"), "wall_s": rec.get("wall_s"), "smoke": rec.get("smoke")}
        except (OSError, ValueError) as e:
            rows[stage] = {"status": "missing", "error": str(e)}
    with open(os.path.join(outdir, "summary.json"), "w") as f:
        json.dump(rows, f, indent=1)
    for stage, row in rows.items():
        print(f"{stage:10} {row['status']:8} {row.get('wall_s')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
