"""Hypothesis profiles for the property-based op tests (tests/test_fuzz_conv_bn_act.py,
tests/test_fuzz_multires_fuse.py; their runner: tests/fuzz_harness.py), chosen with ``HRNET_FAST_FUZZ``.

    ci    (default) 100 cases per op and backend, 15 on the triton backend under TRITON_INTERPRET=1 (its
          interpreter is ~1,000x slower), derandomized: every CI run checks the same cases
    long  1,000 cases per op and backend, the interpreted triton included (its cases are drawn smaller);
          fresh random cases on every run (a failure prints the ``@reproduce_failure`` blob that replays it)

    HRNET_FAST_FUZZ=long .venv/bin/python -m pytest tests/test_fuzz_conv_bn_act.py tests/test_fuzz_multires_fuse.py \
        tests/test_ops_special_values.py -q -rA -s -p no:cacheprovider

Neither profile keeps an example database: the ci cases are fixed by derandomization, and a long-run failure is
reproduced from its printed blob.
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

ENV_VAR = "HRNET_FAST_FUZZ"

# max_examples per op and backend: "native" backends run compiled code, "interpreted" is triton on CPU tensors.
EXAMPLES = {
    "ci": {"native": 100, "interpreted": 15},
    "long": {"native": 1000, "interpreted": 1000},
}

for _name in EXAMPLES:
    settings.register_profile(
        _name,
        max_examples=EXAMPLES[_name]["native"],
        deadline=None,  # the first call of a shape may compile or autotune; hangs are caught by a watchdog instead
        derandomize=_name == "ci",
        database=None,
        print_blob=True,
        # Strategies bound each case's cost, so a slow draw is expected rather than a symptom.
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def active_profile() -> str:
    """The profile named by ``HRNET_FAST_FUZZ`` (default ``ci``); an unknown name is an error, not a silent ci."""
    name = os.environ.get(ENV_VAR, "ci")
    if name not in EXAMPLES:
        raise ValueError(f"{ENV_VAR}={name!r}: choose one of {', '.join(EXAMPLES)}")
    return name


def fuzz_settings(interpreted: bool) -> settings:
    """The active profile, with the example count for a native or an interpreted backend."""
    name = active_profile()
    return settings(settings.get_profile(name), max_examples=EXAMPLES[name]["interpreted" if interpreted else "native"])
