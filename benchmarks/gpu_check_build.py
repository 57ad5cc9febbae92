"""gpu_check stage 'build': installs the package in place and compiles the extension (CUDA kernels included)
with every core. Smoke mode builds nothing (the environment running it is already installed) and records which
backends are live."""
from __future__ import annotations

import os
import sys

from gpu_check_common import SMOKE, remaining, run_command, stage_main


def body(args):
    out = {}
    if not SMOKE:
        jobs = str(os.cpu_count() or 1)
        out["build"] = run_command([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                                    "--no-index", "-v", "-e", "."], remaining(args), env={"MAX_JOBS": jobs})
        if out["build"].get("rc") != 0:
            raise RuntimeError(f"the build failed (rc {out['build'].get('rc')}); see output_tail")
    probe = run_command([sys.executable, "-c", "import json, hrnet_fast; print(json.dumps(hrnet_fast.backend_info()))"],
                        remaining(args))
    if probe.get("rc") != 0:
        raise RuntimeError("hrnet_fast does not import after the build; see backends.output_tail")
    import json
    out["backends"] = json.loads(probe.pop("output_tail").strip().splitlines()[-1])
    return out


if __name__ == "__main__":
    sys.exit(stage_main("build", body))
