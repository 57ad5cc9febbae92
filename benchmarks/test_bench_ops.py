"""Each fused op beside its eager composition, on HRNet-W18's own shapes.

Groups (one per op, shape, precision and batch) put in one table:
  conv_bn_act     eager conv -> BN -> (+residual) -> ReLU modules | the folded composition (conv_bn_act_ref) |
                  the fused op; extra_info: TFLOP/s (2 * MACs / median)
  multires_fuse   eager upsample + add + ReLU (multires_fuse_ref) | the fused op | a plain copy of as many
                  bytes (the device's copy bandwidth, the ceiling); extra_info: GB/s of the bytes the op must
                  read and write (inputs once, output once), the same figure for all three. Nearest on the
                  classification fusion's shapes; bilinear (both align_corners) on HRNetV2-W18 segmentation's at
                  512x1024: the backbone's fusions and the head's per-branch 19-class logits summed at stride 4
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import pytest
import torch
import torch.nn as nn

from bench_support import (BATCHES, BRANCH_CHANNELS, BRANCH_SIZES, DEVICE, DTYPES, SEG_CLASSES, SEG_SIZES, STEM_SIZE,
                           dtype_of, report_rate, run_benchmark)
from hrnet_fast import ops
from hrnet_fast.ops.backends import select


@dataclass(frozen=True)
class ConvCase:
    """One of HRNet-W18's convolutions: where it sits, and its shape."""

    name: str
    cin: int
    cout: int
    size: int  # input height = width
    kernel: int
    stride: int
    residual: bool
    relu: bool


C0, C1, C2, C3 = BRANCH_CHANNELS
S0, S1, S2, S3 = BRANCH_SIZES
CONV_CASES = [
    ConvCase("stem 3x3/2 64->64", 64, 64, STEM_SIZE, 3, 2, residual=False, relu=True),
    ConvCase(f"branch0 block 3x3 {C0}->{C0} +res", C0, C0, S0, 3, 1, residual=True, relu=True),
    ConvCase(f"branch1 block 3x3 {C1}->{C1} +res", C1, C1, S1, 3, 1, residual=True, relu=True),
    ConvCase(f"branch2 block 3x3 {C2}->{C2} +res", C2, C2, S2, 3, 1, residual=True, relu=True),
    ConvCase(f"branch3 block 3x3 {C3}->{C3} +res", C3, C3, S3, 3, 1, residual=True, relu=True),
    ConvCase(f"fuse down 3x3/2 {C0}->{C1}", C0, C1, S0, 3, 2, residual=False, relu=False),
    ConvCase(f"fuse up 1x1 {C3}->{C0}", C3, C0, S3, 1, 1, residual=False, relu=False),
]
CONV_IMPLS = ["eager conv+BN+ReLU", "folded composition", "fused"]


def _conv_operands(case: ConvCase, batch: int, dtype: torch.dtype, layout: str):
    """The eager modules (BN with non-trivial statistics), their folded weights, the input and residual, the
    activations in ``layout`` ("nchw" or "channels_last", what convert() runs on CPU and GPU)."""
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(case.cin, case.cout, case.kernel, case.stride, case.kernel // 2, bias=False)
    bn = nn.BatchNorm2d(case.cout)
    with torch.no_grad():
        bn.running_mean.normal_(0, 0.1, generator=gen)
        bn.running_var.uniform_(0.5, 2.0, generator=gen)
        bn.weight.uniform_(0.5, 1.5, generator=gen)
        bn.bias.normal_(0, 0.1, generator=gen)
    w, b = ops.fold_bn(conv, bn)
    conv, bn = conv.to(DEVICE, dtype).eval(), bn.to(DEVICE, dtype).eval()
    w, b = w.to(DEVICE, dtype), b.to(DEVICE, dtype)
    x = torch.randn(batch, case.cin, case.size, case.size, generator=gen).to(DEVICE, dtype)
    out_size = (case.size + 2 * (case.kernel // 2) - case.kernel) // case.stride + 1
    residual = None
    if case.residual:
        residual = torch.randn(batch, case.cout, out_size, out_size, generator=gen).to(DEVICE, dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
        residual = residual.contiguous(memory_format=torch.channels_last) if residual is not None else None
    return conv, bn, w, b, x, residual, out_size


@pytest.mark.parametrize("impl", CONV_IMPLS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: c.name.replace(" ", "_"))
def test_conv_bn_act(benchmark, case: ConvCase, dtype: str, layout: str, batch: int, impl: str) -> None:
    benchmark.group = f"conv_bn_act {case.name} {dtype} {layout} N={batch}"
    conv, bn, w, b, x, residual, out_size = _conv_operands(case, batch, dtype_of(dtype), layout)
    pad = case.kernel // 2
    if impl == "eager conv+BN+ReLU":
        def fn():
            y = bn(conv(x))
            if residual is not None:
                y = y + residual
            return torch.relu_(y) if case.relu else y
    elif impl == "folded composition":
        def fn():
            return ops.conv_bn_act_ref(x, w, b, stride=case.stride, padding=pad, residual=residual, relu=case.relu)
    else:
        benchmark.extra_info["backend"] = select("conv_bn_act", x.device, None)

        def fn():
            return ops.conv_bn_act(x, w, b, stride=case.stride, padding=pad, residual=residual, relu=case.relu)
    y = run_benchmark(benchmark, fn)
    assert y.shape == (batch, case.cout, out_size, out_size)
    flop = 2 * batch * case.cout * out_size * out_size * case.cin * case.kernel ** 2
    report_rate(benchmark, flop, "TFLOP/s", 1e12)


@dataclass(frozen=True)
class FuseCase:
    """Output branch ``branch`` of a stage-4 HR module: x plus the upsampled lower-resolution branches and the
    (already downsampled) higher-resolution ones."""

    branch: int

    @property
    def name(self) -> str:
        return f"stage4 branch{self.branch} ({BRANCH_CHANNELS[self.branch]}ch {BRANCH_SIZES[self.branch]}px)"

    def operands(self, batch: int, dtype: torch.dtype) -> Tuple[torch.Tensor, List[torch.Tensor], List[torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.branch)
        c, s = BRANCH_CHANNELS[self.branch], BRANCH_SIZES[self.branch]

        def rand(size: int) -> torch.Tensor:
            return torch.randn(batch, c, size, size, generator=gen).to(DEVICE, dtype)
        x = rand(s)
        low_res = [rand(BRANCH_SIZES[j]) for j in range(self.branch + 1, len(BRANCH_SIZES))]
        same_res = [rand(s) for _ in range(self.branch)]
        return x, low_res, same_res


FUSE_CASES = [FuseCase(i) for i in range(len(BRANCH_CHANNELS))]
FUSE_IMPLS = ["eager upsample+add+ReLU", "fused", "copy (bandwidth ceiling)"]


@dataclass(frozen=True)
class BilinearFuseCase:
    """A bilinear fusion of HRNetV2-W18 segmentation at 512x1024 into branch ``branch``: the lower branches (already
    through their 1x1 convs, so at the target's ``channels``) upsampled, plus ``n_same`` higher ones already
    downsampled. The head's case sums the per-branch 19-class logits (the converted head's last 1x1 conv run at each
    branch's resolution), without ReLU."""

    name: str
    branch: int
    channels: int
    n_same: int
    relu: bool

    def operands(self, batch: int, dtype: torch.dtype) -> Tuple[torch.Tensor, List[torch.Tensor], List[torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.branch)

        def rand(size: Tuple[int, int]) -> torch.Tensor:
            return torch.randn(batch, self.channels, *size, generator=gen).to(DEVICE, dtype)
        x = rand(SEG_SIZES[self.branch])
        low_res = [rand(SEG_SIZES[j]) for j in range(self.branch + 1, len(SEG_SIZES))]
        return x, low_res, [rand(SEG_SIZES[self.branch]) for _ in range(self.n_same)]


BILINEAR_CASES = [BilinearFuseCase(f"seg fuse branch{i} ({BRANCH_CHANNELS[i]}ch {'x'.join(map(str, SEG_SIZES[i]))}px)",
                                   i, BRANCH_CHANNELS[i], i, relu=True) for i in range(3)]
BILINEAR_CASES.append(BilinearFuseCase(f"seg head {SEG_CLASSES}-class sum ({'x'.join(map(str, SEG_SIZES[0]))}px)", 0,
                                       SEG_CLASSES, 0, relu=False))


def _bytes(*tensors: Optional[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _benchmark_fuse(benchmark, x: torch.Tensor, low_res: List[torch.Tensor], same_res: List[torch.Tensor], impl: str,
                    **kwargs) -> None:
    """One multires_fuse implementation (FUSE_IMPLS) on these operands; ``kwargs`` go to the op and its reference."""
    # What the op must move at the least: every input read once, the output written once.
    moved = _bytes(x, *low_res, *same_res) + _bytes(x)
    if impl == "eager upsample+add+ReLU":
        expected_shape = x.shape

        def fn():
            return ops.multires_fuse_ref(x, low_res, same_res, **kwargs)
    elif impl == "fused":
        expected_shape = x.shape
        benchmark.extra_info["backend"] = select("multires_fuse", x.device, None)

        def fn():
            return ops.multires_fuse(x, low_res, same_res, **kwargs)
    else:
        src = torch.empty(moved // 2 // x.element_size(), device=DEVICE, dtype=x.dtype)
        dst = torch.empty_like(src)
        expected_shape = dst.shape

        def fn():
            return dst.copy_(src)
    y = run_benchmark(benchmark, fn)
    assert y.shape == expected_shape
    report_rate(benchmark, moved, "GB/s", 1e9)


@pytest.mark.parametrize("impl", FUSE_IMPLS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", FUSE_CASES, ids=lambda c: f"branch{c.branch}")
def test_multires_fuse(benchmark, case: FuseCase, dtype: str, batch: int, impl: str) -> None:
    benchmark.group = f"multires_fuse {case.name} {dtype} N={batch}"
    x, low_res, same_res = case.operands(batch, dtype_of(dtype))
    _benchmark_fuse(benchmark, x, low_res, same_res, impl, relu=True)


@pytest.mark.parametrize("impl", FUSE_IMPLS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("align_corners", (False, True), ids=("half_pixel", "align_corners"))
@pytest.mark.parametrize("case", BILINEAR_CASES, ids=lambda c: "head" if c.channels == SEG_CLASSES else
                         f"branch{c.branch}")
def test_multires_fuse_bilinear(benchmark, case: BilinearFuseCase, align_corners: bool, dtype: str, batch: int,
                                impl: str) -> None:
    benchmark.group = (f"multires_fuse bilinear{' align_corners' if align_corners else ''} {case.name} {dtype} "
                       f"N={batch}")
    x, low_res, same_res = case.operands(batch, dtype_of(dtype))
    _benchmark_fuse(benchmark, x, low_res, same_res, impl, relu=case.relu, mode="bilinear",
                    align_corners=align_corners)
