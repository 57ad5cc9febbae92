"""What ``convert()`` did: each fused pattern, and each part left as it was with the reason."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import List


@dataclass
class Entry:
    path: str      # module path in the original model ("" for the model itself)
    pattern: str   # e.g. "conv+bn+relu", "basic block", "hr fuse (2 up, 1 down)", or "unfused"
    detail: str = ""


@dataclass
class FusionReport:
    fused: List[Entry] = field(default_factory=list)
    unfused: List[Entry] = field(default_factory=list)
    # Per replayed stage, which branch schedule its calls run and why (ConvertedModel.fusion_report fills it in).
    schedule: List[str] = field(default_factory=list)

    def add(self, path: str, pattern: str, detail: str = "") -> None:
        self.fused.append(Entry(path, pattern, detail))

    def skip(self, path: str, what: str, reason: str) -> None:
        self.unfused.append(Entry(path, what, reason))

    def counts(self) -> Counter:
        return Counter(e.pattern for e in self.fused)

    def __str__(self) -> str:
        lines = ["fused:"]
        lines += [f"  {n:4d} x {p}" for p, n in sorted(self.counts().items())]
        if self.unfused:
            lines.append("left as is:")
            lines += [f"  {e.path or '<model>'}: {e.pattern} ({e.detail})" for e in self.unfused]
        else:
            lines.append("left as is: nothing")
        if self.schedule:
            lines.append("branch schedule:")
            lines += [f"  {line}" for line in self.schedule]
        return "\n".join(lines)


def report_conv(report: FusionReport, path: str, pattern: str, conv, why) -> None:
    """Records one conv step: fused (``why`` None), or BN folded into a plain conv because ``conv_bn_act`` cannot
    run it (``why``). A depthwise conv (groups = in = out channels: Lite-HRNet's, MobileNet's) folded that way is all
    the fusion there is for it, so it counts as fused, under its own pattern; other such convs are listed as left."""
    if why is None:
        report.add(path, pattern)
    elif conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels:
        report.add(path, f"depthwise {pattern}", "BN folded into the conv; torch's depthwise conv runs it")
    else:
        report.skip(path, pattern, f"BN folded into a plain conv: {why}")
