"""gpu_check stage 'build': installs the package in place (``pip install -e .``), its extension's CUDA kernels
compiled for this device's architecture only, one compiler job per core; records how long the build took and
when each translation unit finished, then which backends are live.

Why it is that cheap: the extension is 19 translation units (13 C++, 6 CUDA). Compiled one after another on a
2-core EPYC (into a temporary build directory, ``setup.py build_ext --build-temp``) they took 11-45 s each
(replay.cpp 44 s, replay_program.cpp 22 s, module.cpp 21 s, conv_bn_act.cu and multires_fuse.cu 29 and 25 s for
sm_90 alone). With ``MAX_JOBS`` = cores every unit compiles at once, so the build takes about as long as the
slowest one. ``TORCH_CUDA_ARCH_LIST`` = the device's own architecture (9.0 on an H100/H200) compiles each .cu
file for one target instead of the library's default list (8.0, and 9.0 with PTX: 57 and 34 s for the two files
on the same machine), whose other targets nothing on this machine would load.

A checkout whose extension is already built, newer than every source, and installed (a second run on the same
machine) is not rebuilt. Smoke mode builds nothing (the environment running it is already installed).
"""
from __future__ import annotations

import glob
import json
import os
import re
import sys

import torch

from gpu_check_common import ROOT, SMOKE, run_command, stage_main

# ninja prints this before each finished command (torch's build runs it verbose): seconds since the build began.
NINJA_STATUS = "[%f/%t %es] "
_FINISHED = re.compile(r"^\[(\d+)/(\d+) ([\d.]+)s\] (.*)$")


def translation_units(output: str):
    """[{source, finished_s}] from the build output's ninja status lines, in finishing order."""
    units = []
    for line in output.splitlines():
        m = _FINISHED.match(line.strip())
        if m:
            source = re.search(r" -c (\S+\.(?:cpp|cu))\b", m.group(4))
            units.append({"source": os.path.relpath(source.group(1), ROOT) if source else m.group(4)[:120],
                          "finished_s": float(m.group(3))})
    return units


def up_to_date() -> bool:
    """An installed, importable build whose extension is newer than every source it is built from."""
    built = glob.glob(os.path.join(ROOT, "hrnet_fast", "_C*.so"))
    sources = glob.glob(os.path.join(ROOT, "csrc", "**", "*"), recursive=True) + [os.path.join(ROOT, "setup.py")]
    if not built:
        return False
    probe = run_command([sys.executable, "-c", "import hrnet_fast_kernels, hrnet_fast._C"], 60)
    return probe.get("rc") == 0 and min(os.path.getmtime(p) for p in built) > max(map(os.path.getmtime, sources))


def build(stage) -> None:
    major, minor = torch.cuda.get_device_capability()
    env = {"MAX_JOBS": str(os.cpu_count() or 1), "TORCH_CUDA_ARCH_LIST": f"{major}.{minor}",
           "NINJA_STATUS": NINJA_STATUS}
    stage.record["build_env"] = env
    if up_to_date():
        stage.record["build"] = {"skipped": "the installed extension is newer than every source"}
        return
    run = run_command([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                       "-v", "-e", "."], stage.remaining(), env=env, keep_output=True)
    units = translation_units(run.pop("output", ""))
    stage.record["build"] = {**run, "build_s": run["wall_s"], "translation_units": units,
                             "slowest": max(units, key=lambda u: u["finished_s"], default=None)}
    if run.get("rc") != 0:
        raise RuntimeError(f"the build failed (rc {run.get('rc')}); see build.output_tail")


def body(stage, args) -> None:
    if SMOKE:
        stage.record["build"] = {"skipped": "smoke mode: the environment running it is already installed"}
    else:
        build(stage)
    stage.save()
    probe = run_command([sys.executable, "-c", "import json, hrnet_fast; print(json.dumps(hrnet_fast.backend_info()))"],
                        stage.remaining())
    if probe.get("rc") != 0:
        raise RuntimeError(f"hrnet_fast does not import after the build:\n{probe.get('output_tail')}")
    backends = json.loads(probe.pop("output_tail").strip().splitlines()[-1])
    stage.record["backends"] = backends
    if not SMOKE:
        for name in ("cuda", "triton"):
            if not backends.get(name, {}).get("live"):
                stage.fail(f"backend {name} is not live after the build: {backends.get(name)}")


if __name__ == "__main__":
    sys.exit(stage_main("build", body))
