"""Triton kernel for ``multires_fuse``: ``relu(x + sum_j up(low_res[j]) + sum_k same_res[k])`` in one pass.

The op is memory-bound, so the kernel reads every input once and writes the output once:
- Each program covers BLOCK consecutive elements of the output in the output's own memory order (NCHW, or NHWC
  when x is channels_last), so stores are contiguous; (n, c, h, w) are recovered from the flat index.
- A low-resolution input z_j is read in place, never upsampled into memory. Nearest, with factor f_j = 2**s_j:
  at (n, c, h >> s_j, w >> s_j), exactly that index map. Bilinear: the four pixels of F.interpolate's taps
  (PyTorch's fp32 index and weight formulas, csrc/bilinear.h) blended in fp32.
- Every input is addressed through its own strides, so NCHW, channels_last, mixed layouts and strided views are
  read without copies.
- The number of low_res and same_res inputs are constexprs: one compiled variant per count, no dead loads.
- Sums run in fp32 whatever the storage dtype; the result is cast once, at the store.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import triton
import triton.language as tl
from triton import knobs

from hrnet_fast.ops.checks import output_memory_format

from . import launch, needs_int64, tuning

MAX_TERMS = 4  # slots per input kind in the kernel signature (checks.MAX_TERMS)


# triton.jit decides at decoration whether the kernel is interpreted; read the same knob once, here.
_INTERPRETED = knobs.runtime.interpret

# Output elements a thread sums at most in the bilinear variant: four taps per term keep more values live, and
# at 16 a thread (BLOCK 4096 on 8 warps) ptxas spills hundreds of bytes on sm_90.
MAX_BILINEAR_ELEMENTS_PER_THREAD = 8
_GPU_BLOCKS = ((256, 2), (512, 4), (1024, 4), (1024, 8), (2048, 8), (4096, 8))  # (BLOCK, num_warps), smallest first
# A fusion the smallest block covers in at most this many programs (half of an H100's SMs) takes that block
# untimed: with a partial wave, larger blocks only leave more SMs idle on a memory-bound sum.
HALF_WAVE_PROGRAMS = 66


def candidates(bilinear: bool, total: Optional[int] = None) -> List[triton.Config]:
    """The configs tuning times (``tuning.pick``) for an output of ``total`` elements (None: every config any size
    can get): every block size for nearest, those within the per-thread bound for bilinear, only the smallest
    where it fills at most half a wave. The interpreter runs each program in Python, at a cost that grows with the
    number of programs: one large block there."""
    if _INTERPRETED:
        return [triton.Config({"BLOCK": 4096})]
    configs = [triton.Config({"BLOCK": block}, num_warps=warps) for block, warps in _GPU_BLOCKS
               if not bilinear or block // (32 * warps) <= MAX_BILINEAR_ELEMENTS_PER_THREAD]
    if total is not None and triton.cdiv(total, configs[0].kwargs["BLOCK"]) <= HALF_WAVE_PROGRAMS:
        return configs[:1]
    return configs


@triton.jit
def _load_nearest(ptr, n, c, h, w, sn, sc, sh, sw, shift, mask):
    """One low-resolution input at (n, c, h >> shift, w >> shift), as fp32."""
    offs = n * sn + c * sc + (h >> shift) * sh + (w >> shift) * sw
    return tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _linear_taps(d, size_in, size_out, scale, ALIGN_CORNERS: tl.constexpr):
    """F.interpolate's bilinear taps of output indices d along one dimension: (i0, i1, l0, l1), as PyTorch computes
    them in fp32 (csrc/bilinear.h); a dimension whose size does not change is copied."""
    df = d.to(tl.float32)
    if ALIGN_CORNERS:
        src = scale * df
    else:
        src = tl.maximum(scale * (df + 0.5) - 0.5, 0.0)
    i0 = tl.minimum(tl.floor(src).to(d.dtype), size_in - 1)
    l1 = tl.minimum(tl.maximum(src - i0.to(tl.float32), 0.0), 1.0)
    i1 = i0 + (i0 < size_in - 1).to(d.dtype)
    same = size_in == size_out
    return tl.where(same, d, i0), tl.where(same, d, i1), tl.where(same, 1.0, 1.0 - l1), tl.where(same, 0.0, l1)


@triton.jit
def _load_bilinear(ptr, n, c, h, w, sn, sc, sh, sw, zh, zw, scale_h, scale_w, H, W, ALIGN_CORNERS: tl.constexpr,
                   mask):
    """One low-resolution input [N, C, zh, zw] bilinearly interpolated at output (n, c, h, w) of [N, C, H, W], fp32."""
    h0, h1, lh0, lh1 = _linear_taps(h, zh, H, scale_h, ALIGN_CORNERS)
    w0, w1, lw0, lw1 = _linear_taps(w, zw, W, scale_w, ALIGN_CORNERS)
    top = ptr + n * sn + c * sc + h0 * sh
    bottom = top + (h1 - h0) * sh
    col0, col1 = w0 * sw, w1 * sw
    top_row = lw0 * tl.load(top + col0, mask=mask, other=0.0).to(tl.float32) + \
        lw1 * tl.load(top + col1, mask=mask, other=0.0).to(tl.float32)
    bottom_row = lw0 * tl.load(bottom + col0, mask=mask, other=0.0).to(tl.float32) + \
        lw1 * tl.load(bottom + col1, mask=mask, other=0.0).to(tl.float32)
    return lh0 * top_row + lh1 * bottom_row


@triton.jit
def _load_low(ptr, n, c, h, w, sn, sc, sh, sw, shift, zh, zw, scale_h, scale_w, H, W, BILINEAR: tl.constexpr,
              ALIGN_CORNERS: tl.constexpr, mask):
    """One low-resolution input upsampled to output (n, c, h, w), as fp32."""
    if BILINEAR:
        return _load_bilinear(ptr, n, c, h, w, sn, sc, sh, sw, zh, zw, scale_h, scale_w, H, W, ALIGN_CORNERS, mask)
    return _load_nearest(ptr, n, c, h, w, sn, sc, sh, sw, shift, mask)


@triton.jit
def _load_same(ptr, n, c, h, w, sn, sc, sh, sw, mask):
    """One full-resolution input at (n, c, h, w), as fp32."""
    return tl.load(ptr + n * sn + c * sc + h * sh + w * sw, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _multires_fuse_kernel(
    y_ptr,  # [N, C, H, W] output, dense in NCHW order (NHWC order when CHANNELS_LAST)
    x_ptr,  # [N, C, H, W], strides sxn, sxc, sxh, sxw
    # low_res[j]: [N, C, zh_j, zw_j], strides sz{j}n..sz{j}w; nearest: zh_j = H >> shift_j, zw_j = W >> shift_j;
    # bilinear: zh_j <= H, zw_j <= W, scale_h{j} / scale_w{j} F.interpolate's fp32 source-index scales
    z0_ptr, z1_ptr, z2_ptr, z3_ptr,
    d0_ptr, d1_ptr, d2_ptr, d3_ptr,  # same_res[k]: [N, C, H, W], strides sd{k}n..sd{k}w
    total, C, H, W,  # total = N * C * H * W
    sxn, sxc, sxh, sxw,
    sz0n, sz0c, sz0h, sz0w, shift0, zh0, zw0, scale_h0, scale_w0,
    sz1n, sz1c, sz1h, sz1w, shift1, zh1, zw1, scale_h1, scale_w1,
    sz2n, sz2c, sz2h, sz2w, shift2, zh2, zw2, scale_h2, scale_w2,
    sz3n, sz3c, sz3h, sz3w, shift3, zh3, zw3, scale_h3, scale_w3,
    sd0n, sd0c, sd0h, sd0w,
    sd1n, sd1c, sd1h, sd1w,
    sd2n, sd2c, sd2h, sd2w,
    sd3n, sd3c, sd3h, sd3w,
    N_LOW: tl.constexpr,  # how many z slots are real (the rest alias x and are never read)
    N_SAME: tl.constexpr,  # how many d slots are real
    RELU: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,  # the output's memory order
    BILINEAR: tl.constexpr,  # mode="bilinear" (else nearest)
    ALIGN_CORNERS: tl.constexpr,  # bilinear's align_corners
    INT64: tl.constexpr,  # some offset can reach 2**31: index in int64
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    idx = pid * BLOCK + tl.arange(0, BLOCK)
    mask = idx < total
    if CHANNELS_LAST:
        c = idx % C
        t = idx // C
        w = t % W
        t = t // W
        h = t % H
        n = t // H
    else:
        w = idx % W
        t = idx // W
        h = t % H
        t = t // H
        c = t % C
        n = t // C

    acc = _load_same(x_ptr, n, c, h, w, sxn, sxc, sxh, sxw, mask)
    if N_LOW > 0:
        acc += _load_low(z0_ptr, n, c, h, w, sz0n, sz0c, sz0h, sz0w, shift0, zh0, zw0, scale_h0,
                         scale_w0, H, W, BILINEAR, ALIGN_CORNERS, mask)
    if N_LOW > 1:
        acc += _load_low(z1_ptr, n, c, h, w, sz1n, sz1c, sz1h, sz1w, shift1, zh1, zw1, scale_h1,
                         scale_w1, H, W, BILINEAR, ALIGN_CORNERS, mask)
    if N_LOW > 2:
        acc += _load_low(z2_ptr, n, c, h, w, sz2n, sz2c, sz2h, sz2w, shift2, zh2, zw2, scale_h2,
                         scale_w2, H, W, BILINEAR, ALIGN_CORNERS, mask)
    if N_LOW > 3:
        acc += _load_low(z3_ptr, n, c, h, w, sz3n, sz3c, sz3h, sz3w, shift3, zh3, zw3, scale_h3,
                         scale_w3, H, W, BILINEAR, ALIGN_CORNERS, mask)
    if N_SAME > 0:
        acc += _load_same(d0_ptr, n, c, h, w, sd0n, sd0c, sd0h, sd0w, mask)
    if N_SAME > 1:
        acc += _load_same(d1_ptr, n, c, h, w, sd1n, sd1c, sd1h, sd1w, mask)
    if N_SAME > 2:
        acc += _load_same(d2_ptr, n, c, h, w, sd2n, sd2c, sd2h, sd2w, mask)
    if N_SAME > 3:
        acc += _load_same(d3_ptr, n, c, h, w, sd3n, sd3c, sd3h, sd3w, mask)
    if RELU:
        acc = tl.maximum(acc, 0.0, propagate_nan=tl.PropagateNan.ALL)  # NaN stays NaN, as in torch.relu
    tl.store(y_ptr + idx, acc.to(y_ptr.dtype.element_ty), mask=mask)


def linear_scale(size_in: int, size_out: int, align_corners: bool) -> float:
    """F.interpolate's bilinear source-index scale along one dimension, in fp32 as PyTorch computes it."""
    if align_corners:
        if size_out <= 1:
            return 0.0
        size_in, size_out = size_in - 1, size_out - 1
    return (torch.tensor(size_in, dtype=torch.float32) / size_out).item()


# plan key (plan_key) -> (output size, output strides, LaunchPlan or None for an empty output)
_plans: Dict[Tuple, Tuple[Tuple[int, ...], Tuple[int, ...], Optional[launch.LaunchPlan]]] = {}


def plan_key(x: torch.Tensor, low_res: List[torch.Tensor], same_res: List[torch.Tensor], relu: bool, mode: str,
             align_corners: bool) -> Tuple:
    """Everything that decides a launch: shapes, strides, dtype, device and 16-byte alignment of every input (the
    variant Triton compiles, the scalars and the grid), and the flags."""
    return (x.shape, x.stride(), x.dtype, x.get_device(), x.data_ptr() & 15,
            tuple((z.shape, z.stride(), z.data_ptr() & 15) for z in low_res),
            tuple((d.stride(), d.data_ptr() & 15) for d in same_res), relu, mode, align_corners)


def multires_fuse(x: torch.Tensor, low_res: List[torch.Tensor], same_res: List[torch.Tensor], *,
                  relu: bool, mode: str = "nearest", align_corners: bool = False) -> torch.Tensor:
    """``relu(x + sum_j up(low_res[j]) + sum_k same_res[k])`` on validated inputs (see checks.py).

    Returns a new tensor in x's dtype and memory format; an empty x gives an empty output without a launch.
    Compiled kernels launch through a plan made by the first call per ``plan_key`` (``launch.py``); raises
    tuning.NotWarmedUp if that first call happens during CUDA-graph capture.
    """
    if _INTERPRETED:
        return _launch(x, low_res, same_res, relu, mode, align_corners, make_plan=False)[0]
    key = plan_key(x, low_res, same_res, relu, mode, align_corners)
    plan = _plans.get(key)
    if plan is None:
        if tuning.capturing(x.device):
            raise tuning.not_warmed_up("multires_fuse", f"x {tuple(x.shape)} {x.dtype}, {len(low_res)} low_res, "
                                                        f"{len(same_res)} same_res, {mode}")
        y, _plans[key] = _launch(x, low_res, same_res, relu, mode, align_corners, make_plan=True)
        return y
    size, strides, run = plan
    y = torch.empty_strided(size, strides, dtype=x.dtype, device=x.device)
    if run is not None:
        run(y, x, *low_res, *[x] * (MAX_TERMS - len(low_res)), *same_res, *[x] * (MAX_TERMS - len(same_res)))
    return y


def _launch(x: torch.Tensor, low_res: List[torch.Tensor], same_res: List[torch.Tensor], relu: bool, mode: str,
            align_corners: bool, make_plan: bool):
    """The call through ``kernel[grid]``, tuning first where the key is new: (output, (its size, strides, the
    launch plan repeating the launch, or None) if ``make_plan`` else None)."""
    y = torch.empty_like(x, memory_format=output_memory_format(x))
    if y.numel() == 0:
        return y, (tuple(y.shape), y.stride(), None) if make_plan else None
    n, c, h, w = x.shape
    bilinear = mode == "bilinear"
    # Unused slots alias x with zero strides; N_LOW / N_SAME keep the kernel from reading them.
    low_args, same_args = [], []
    low_ptrs = list(low_res) + [x] * (MAX_TERMS - len(low_res))
    same_ptrs = list(same_res) + [x] * (MAX_TERMS - len(same_res))
    for z in low_res:
        zh, zw = z.shape[2], z.shape[3]
        shift = 0 if bilinear else (h // zh).bit_length() - 1  # nearest: the factor is a power of two (checked)
        scales = (linear_scale(zh, h, align_corners), linear_scale(zw, w, align_corners)) if bilinear else (1.0, 1.0)
        low_args += [*z.stride(), shift, zh, zw, *scales]
    low_args += [0, 0, 0, 0, 0, 1, 1, 1.0, 1.0] * (MAX_TERMS - len(low_res))
    for d in same_res:
        same_args += list(d.stride())
    same_args += [0] * (4 * (MAX_TERMS - len(same_res)))

    total = y.numel()
    channels_last = output_memory_format(x) == torch.channels_last
    args = (y, x, *low_ptrs, *same_ptrs, total, c, h, w, *x.stride(), *low_args, *same_args)
    flags = dict(N_LOW=len(low_res), N_SAME=len(same_res), RELU=bool(relu), CHANNELS_LAST=channels_last,
                 BILINEAR=bilinear, ALIGN_CORNERS=bool(align_corners), INT64=needs_int64(y, x, *low_res, *same_res))

    def grid(config: triton.Config) -> Tuple[int]:
        return (triton.cdiv(total, config.kwargs["BLOCK"]),)

    def run(config: triton.Config) -> None:
        _multires_fuse_kernel[grid(config)](*args, **flags, **config.all_kwargs())

    key = (str(x.dtype).replace("torch.", ""), "nhwc" if channels_last else "nchw", n, c, h, w, len(low_res),
           len(same_res), mode)
    config = tuning.pick("multires_fuse", key, candidates(bilinear, total), run, x.device)
    if not make_plan:
        run(config)
        return y, None
    plan = launch.make(_multires_fuse_kernel, grid(config), args, {**flags, **config.all_kwargs()},
                       2 + 2 * MAX_TERMS, x.device)
    return y, (tuple(y.shape), y.stride(), plan)
