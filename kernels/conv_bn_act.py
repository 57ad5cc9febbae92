"""Triton kernel for ``conv_bn_act``: ``relu(conv2d(x, w', b') + residual)`` with BN folded into (w', b').

Implicit GEMM, never materialising im2col:
    M = N * Ho * Wo (output pixels), N = Cout, K = KH * KW * Cin, ordered (kh, kw, cin) with cin fastest.
Each program owns a BLOCK_M x BLOCK_N output tile and walks K in one loop over (tap, channel chunk): for each
of the KH * KW taps it gathers the shifted input rows (padding handled by a row mask), then steps along Cin in
BLOCK_K chunks, each a ``tl.dot`` accumulating in fp32. The epilogue adds the bias, then the residual, then
applies ReLU, and stores once in x's memory format.

Both operands load as vectors, so the loop software-pipelines (cp.async into shared memory on sm_80+):
- Weights are read pre-packed K-major (``pack_weight``): row k = (kh * KW + kw) * Cin + cin holds Cout values,
  contiguous and zero-padded to a multiple of 16 bytes. A weight tile is BLOCK_K rows of BLOCK_N consecutive
  values: 16-byte loads whatever the channel counts. (Read straight from the [Cout, Cin, 3, 3] tensor, the same
  tile strides by 9 elements in K and by 9 * Cin in N: one 2-byte load per element.) Converted models hand the
  kernel weights packed once (``hrnet_fast.ops.weights``); any other weight is packed on its first use and the
  copy reused while the tensor lives unchanged.
- Activations are not copied or padded: the op takes and returns ordinary tensors. When x, the residual and the
  output are dense channels_last (``NHWC``, what converted models run), a pixel's channels are contiguous and
  the pixel's offset is computed as pixel_index * CIN with CIN a compile-time constant, so the compiler knows the
  row alignment: 16-byte loads for Cin = 72 and 144, 8 bytes for 36, 4 bytes for 18 (a pixel of 18 fp16
  channels is 36 bytes, so no wider access is aligned). Any other layout (NCHW, strided views) is read through
  its strides, element by element, as before.

Why K is (kh, kw, cin), masked per tap, rather than flat K padded to a multiple of 16:
- HRNet's channel counts (3, 18, 36, 72, 144) are not multiples of 16, and tensor-core dots need K tiles of at
  least 16. Masking the last channel chunk of each tap (loads return 0 beyond Cin) keeps every tile legal
  without padded copies of x.
- With cin fastest, a channels_last input gives contiguous K loads (one pixel's channels).
- The tap's input coordinates and padding mask depend only on (tap, output pixel), so they are computed per
  tap instead of per K element (a flat K index would need a division by Cin for every element).
The cost is masked lanes in a tap's last chunk (Cin = 18 with BLOCK_K = 32 loads 32 channels for 18).

Dense NHWC 3x3 walks a kernel row instead of a tap: the row's three taps read three adjacent input pixels, whose
3 * Cin channels are contiguous in memory, and their weight rows are contiguous in the packed weight, so the K
loop steps over (kernel row, chunk of 3 * Cin) with a per-element mask for the left/right zero padding (a value's
tap is j // Cin). Cin = 18 then loads 54 useful values in one 64-wide chunk per kernel row (3 chunks instead of
9 of 32 for 18); Cin = 72 walks 216 values in 7 chunks of 32 instead of 9 taps of 3 chunks.

Cin and Cout are compile-time constants (a network has a handful of channel counts): the K loop's trip count
and the row alignments are then known when compiling. The Triton 3.6 interpreter also needs a constant loop
bound: with numpy >= 2.4 it cannot iterate over a runtime one (triton-lang/triton#9171).

Launch configs: a short candidate list per shape class (``candidates``), timed once per tuning key and
remembered on disk (``tuning.py``); every candidate compiles for sm_90 without register spills (checked in CI by
tests/test_static_gpu.py).

fp32 inputs follow ``torch.backends.cudnn.allow_tf32`` like PyTorch's own convolution (``conv_dot_precision``):
TF32 dots when it allows them, IEEE fp32 dots (equal to PyTorch's fp32 convolution to rounding) when not.
bfloat16 runs on GPUs only: the interpreter multiplies bfloat16 dot operands as raw integers, so it is refused
there with an error rather than returning wrong numbers.
"""
from __future__ import annotations

import weakref
from typing import Dict, List, Optional, Tuple

import torch
import triton
import triton.language as tl
from triton import knobs

from hrnet_fast.ops.checks import conv_out_shape, output_memory_format

from . import conv_dot_precision, launch, needs_int64, tuning

# Candidate tiles (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) per shape class, best guess first (the one
# used without timing, e.g. during CUDA-graph capture). Small maps (7x7, 14x14 at small batch) want short M tiles
# so enough programs fill the GPU; large maps want larger tiles. 128-row tiles run with 8 warps: with 4 warps the
# fp16 128x32x32 tile needed 255 registers and spilled.
_SMALL_M = 4096  # bucketed M up to this is the small class
_TILES = {
    "small": ((32, 32, 32, 2, 3), (64, 32, 32, 4, 3), (32, 64, 32, 4, 3)),
    "large": ((64, 64, 32, 4, 3), (128, 32, 32, 8, 3), (128, 64, 32, 8, 3), (64, 128, 32, 4, 3)),
}
_INTERPRETER_TILE = (128, 64, 32)  # the interpreter's cost grows with the number of programs, not tile size
# A small-class GEMM whose first (smallest) tile makes at most this many programs is not tuned: half of an H100's
# 132 SMs, so every candidate runs a single partial wave in which each program walks the same K loop, and a larger
# tile only gives each SM more of the same work. Timing the others would cost their compiles (most of a first
# forward's compile time: at batch 1, 33 of W18's 54 conv shapes are this small) for no real choice.
HALF_WAVE_PROGRAMS = 66
ROW_BLOCK_K = 64  # the widest K chunk a kernel-row run gets (_block_k)

# triton.jit decides at decoration whether the kernel is interpreted; read the same knob once, here.
_INTERPRETED = knobs.runtime.interpret


def m_bucket(m: int) -> int:
    """Output pixels rounded up to a power of two: the tuning key's M, so nearby batch sizes share a choice."""
    return triton.next_power_of_2(max(m, 1))


def _block_k(tile_k: int, cin: int, row_taps: int) -> int:
    """The K chunk for a tile asking ``tile_k``: clamped to the padded K run (Cin, or a kernel row's
    ``row_taps * cin`` values); a row run of at most ROW_BLOCK_K values is walked in one chunk (Cin = 18: 54
    values in one 64-wide chunk per kernel row, three chunks in all instead of nine 32-wide ones of 18)."""
    run = row_taps * cin
    k_cap = max(16, triton.next_power_of_2(run))
    return min(ROW_BLOCK_K if row_taps > 1 and run <= ROW_BLOCK_K else tile_k, k_cap)


def candidates(cin: int, cout: int, m: int, row_taps: int = 1) -> List[triton.Config]:
    """The configs worth timing for a GEMM of M = m rows, N = cout, K walked in runs of ``row_taps * cin`` values
    (``row_taps`` = KH where a kernel row is one run, dense NHWC; else 1): the shape class's tiles with BLOCK_N
    clamped to the padded channel count (larger ones only add masked lanes) and BLOCK_K from ``_block_k``; only
    the first where it fills at most half a wave (``HALF_WAVE_PROGRAMS``)."""
    n_cap = max(16, triton.next_power_of_2(cout))
    if _INTERPRETED:
        bm, bn, bk = _INTERPRETER_TILE
        return [triton.Config({"BLOCK_M": bm, "BLOCK_N": min(bn, n_cap), "BLOCK_K": _block_k(bk, cin, row_taps)})]
    small = m_bucket(m) <= _SMALL_M
    tiles = _TILES["small" if small else "large"]
    if small:
        bm, bn = tiles[0][:2]
        if triton.cdiv(m_bucket(m), bm) * triton.cdiv(cout, min(bn, n_cap)) <= HALF_WAVE_PROGRAMS:
            tiles = tiles[:1]
    seen, out = set(), []
    for bm, bn, bk, warps, stages in tiles:
        tile = (bm, min(bn, n_cap), _block_k(bk, cin, row_taps), warps, stages)
        if tile not in seen:
            seen.add(tile)
            out.append(triton.Config({"BLOCK_M": tile[0], "BLOCK_N": tile[1], "BLOCK_K": tile[2]},
                                     num_warps=warps, num_stages=stages))
    return out


def all_gpu_configs(cin: int, cout: int, row_taps: int = 1) -> List[triton.Config]:
    """Every config ``candidates`` can return for these channel counts, over all M (for static checks)."""
    seen, out = set(), []
    for m in (_SMALL_M, 2 * _SMALL_M):  # the largest small-class and a large-class M: every tile of each class
        for c in candidates(cin, cout, m, row_taps):
            rec = (tuple(sorted(c.kwargs.items())), c.num_warps, c.num_stages)
            if rec not in seen:
                seen.add(rec)
                out.append(c)
    return out


# Sizes and strides are not specialised on divisibility by 16 (or on equalling 1): no index they enter is loaded as a
# vector (NHWC rows get their alignment from the CIN/COUT constexprs; the strided path loads element by element),
# so specialising only multiplied the compiled variants, one per divisibility pattern of the map sizes. The bias
# stride stays specialised: converted models pass 1, which makes the bias load a vector.
@triton.jit(do_not_specialize=["M", "H", "W", "Ho", "Wo", "sxn", "sxc", "sxh", "sxw", "srn", "src", "srh", "srw",
                               "syn", "syc", "syh", "syw"])
def _conv_bn_act_kernel(
    x_ptr,  # [N, CIN, H, W], strides sxn, sxc, sxh, sxw (dense NHWC when NHWC)
    w_ptr,  # [KH * KH * CIN, COUT_PAD] packed weight (pack_weight), BN folded in
    b_ptr,  # [COUT], stride sb; aliases w_ptr (never read) when HAS_BIAS is False
    r_ptr,  # [N, COUT, Ho, Wo], strides srn, src, srh, srw; aliases x_ptr (never read) when HAS_RESIDUAL is False
    y_ptr,  # [N, COUT, Ho, Wo] output, strides syn, syc, syh, syw (x's memory format; dense NHWC when NHWC)
    M, H, W, Ho, Wo,  # M = N * Ho * Wo
    sxn, sxc, sxh, sxw,
    sb,
    srn, src, srh, srw,
    syn, syc, syh, syw,
    CIN: tl.constexpr,  # input channels: fixes the K loop's trip count and NHWC row alignment at compile time
    COUT: tl.constexpr,  # output channels
    COUT_PAD: tl.constexpr,  # packed weight row length: COUT rounded up to 16 bytes
    KH: tl.constexpr,  # kernel size (square), 1 or 3
    STRIDE: tl.constexpr,
    PADDING: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    RELU: tl.constexpr,
    NHWC: tl.constexpr,  # x, y and the residual are dense channels_last: index by pixel * channels
    INT64: tl.constexpr,  # some offset can reach 2**31: index in int64
    DOT_PRECISION: tl.constexpr,  # "ieee" or "tf32" for fp32 inputs (conv_dot_precision)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rk = tl.arange(0, BLOCK_K)
    if INT64:  # every index that multiplies a stride, so each product is computed in int64
        pid_m = pid_m.to(tl.int64)
        pid_n = pid_n.to(tl.int64)
        rk = rk.to(tl.int64)

    # Output pixels (rows of the GEMM) of this tile.
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = rm < M
    ow = rm % Wo
    t = rm // Wo
    oh = t % Ho
    n = t // Ho
    ih0 = oh * STRIDE - PADDING
    iw0 = ow * STRIDE - PADDING

    # Output channels (columns of the GEMM) of this tile.
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < COUT
    w_cols_ok = rn < COUT_PAD  # the packed weight's zero padding may be read: a multiple of 16 bytes stays vector

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if NHWC and KH > 1:
        # One kernel row's KH taps are KH adjacent input pixels: in NHWC memory and in the packed weight their
        # KH * CIN values are one contiguous run of K. Walk it in BLOCK_K chunks; a value's tap (column) is
        # j // CIN, and the left/right zero padding becomes a per-element mask.
        row_k: tl.constexpr = KH * CIN
        chunks: tl.constexpr = (row_k + BLOCK_K - 1) // BLOCK_K
        for kk in range(0, KH * chunks):
            kh = kk // chunks
            ih = ih0 + kh
            j = (kk % chunks) * BLOCK_K + rk  # [BLOCK_K] position along the row's KH * CIN values
            k_ok = j < row_k
            iw = iw0[:, None] + (j // CIN)[None, :]  # [BLOCK_M, BLOCK_K] input column of each value
            ok = (m_ok & (ih >= 0) & (ih < H))[:, None] & k_ok[None, :] & (iw >= 0) & (iw < W)
            x_offs = (((n * H + ih) * W + iw0) * CIN)[:, None] + j[None, :]  # from the row's first tap pixel
            a = tl.load(x_ptr + x_offs, mask=ok, other=0.0)
            w_offs = (kh * row_k + j)[:, None] * COUT_PAD + rn[None, :]
            b = tl.load(w_ptr + w_offs, mask=k_ok[:, None] & w_cols_ok[None, :], other=0.0)
            acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    else:
        chunks: tl.constexpr = (CIN + BLOCK_K - 1) // BLOCK_K
        for kk in range(0, KH * KH * chunks):
            tap = kk // chunks
            ih = ih0 + tap // KH
            iw = iw0 + tap % KH
            ci = (kk % chunks) * BLOCK_K + rk
            k_ok = ci < CIN
            row_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)  # zero padding
            if NHWC:
                x_offs = (((n * H + ih) * W + iw) * CIN)[:, None] + ci[None, :]
            else:
                x_offs = (n * sxn + ih * sxh + iw * sxw)[:, None] + ci[None, :] * sxc
            a = tl.load(x_ptr + x_offs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            w_offs = (tap * CIN + ci)[:, None] * COUT_PAD + rn[None, :]
            b = tl.load(w_ptr + w_offs, mask=k_ok[:, None] & w_cols_ok[None, :], other=0.0)
            acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)

    # Epilogue: bias -> +residual -> ReLU, one store.
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn * sb, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out_ok = m_ok[:, None] & n_ok[None, :]
    if NHWC:
        pix_offs = (rm * COUT)[:, None] + rn[None, :]  # output pixel rm's channels, contiguous
    if HAS_RESIDUAL:
        if NHWC:
            r_offs = pix_offs
        else:
            r_offs = (n * srn + oh * srh + ow * srw)[:, None] + rn[None, :] * src
        acc += tl.load(r_ptr + r_offs, mask=out_ok, other=0.0).to(tl.float32)
    if RELU:
        acc = tl.maximum(acc, 0.0, propagate_nan=tl.PropagateNan.ALL)  # NaN stays NaN, as in torch.relu
    if NHWC:
        y_offs = pix_offs
    else:
        y_offs = (n * syn + oh * syh + ow * syw)[:, None] + rn[None, :] * syc
    tl.store(y_ptr + y_offs, acc.to(y_ptr.dtype.element_ty), mask=out_ok)


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """The layout the kernel reads, as a [Cout, Cin, KH, KW] tensor: a strided view of a K-major buffer
    [KH * KW * Cin, Cout_pad] (k = (kh * KW + kw) * Cin + cin, Cout zero-padded to a multiple of 16 bytes).

    The view holds the weight's values, so every backend reads it as the weight it is; the Triton launcher
    recognises the strides (``is_packed``) and reads the buffer directly. A pure function of the weight (one copy
    kernel); any layout of ``weight`` is accepted. Converted models build it once per weight
    (``hrnet_fast.ops.weights``)."""
    cout, cin, kh, kw = weight.shape
    per_16_bytes = 16 // weight.element_size()
    cout_pad = -(-cout // per_16_bytes) * per_16_bytes
    buffer = weight.new_zeros(kh * kw * cin, cout_pad)
    buffer[:, :cout] = weight.permute(2, 3, 1, 0).reshape(kh * kw * cin, cout)
    return buffer.as_strided((cout, cin, kh, kw), (1, cout_pad, kw * cin * cout_pad, cin * cout_pad))


def is_packed(weight: torch.Tensor) -> bool:
    """Whether ``weight`` is laid out as ``pack_weight`` lays it out, with the whole padded buffer in its storage
    (the kernel reads the padding columns) and 16-byte aligned rows."""
    cout, cin, kh, kw = weight.shape
    cout_pad = weight.stride(1)
    if weight.stride() != (1, cout_pad, kw * cin * cout_pad, cin * cout_pad) or cout_pad < cout:
        return False
    size = weight.element_size()
    end = (weight.storage_offset() + kh * kw * cin * cout_pad) * size
    return (cout_pad * size) % 16 == 0 and weight.data_ptr() % 16 == 0 and end <= weight.untyped_storage().nbytes()


# id(weight) -> (weakref to it, what identifies its contents, the packed copy or None where the weight is itself
# packed): a weight not yet packed (e.g. one passed to the public op) is packed on first use and the copy reused
# while the tensor lives unchanged (an in-place change bumps _version; set_ or as_strided_ change the pointer or
# strides). Packed weights are remembered too, so a call checks the layout once, not every time.
_packed: Dict[int, Tuple[weakref.ref, Tuple, Optional[torch.Tensor]]] = {}


def packed_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` itself when it is packed, else ``pack_weight(weight)``, computed once per tensor and version."""
    state = (weight._version, weight.data_ptr(), weight.stride())
    entry = _packed.get(id(weight))
    if entry is not None and entry[0]() is weight and entry[1] == state:
        return weight if entry[2] is None else entry[2]
    packed = None if is_packed(weight) else pack_weight(weight)
    ref = weakref.ref(weight, lambda _, k=id(weight): _packed.pop(k, None))
    _packed[id(weight)] = (ref, state, packed)
    return weight if packed is None else packed


def tuning_key(x: torch.Tensor, weight: torch.Tensor, stride: int, nhwc: bool, m: int) -> Tuple:
    cout, cin, k, _ = weight.shape
    return (str(x.dtype).replace("torch.", ""), "nhwc" if nhwc else "strided", cin, cout, k, stride, m_bucket(m))


# plan key (plan_key) -> (output size, strides, dtype, device, LaunchPlan or None for an empty output)
_plans: Dict[Tuple, Tuple[Tuple[int, ...], Tuple[int, ...], torch.dtype, torch.device,
                          Optional[launch.LaunchPlan]]] = {}


def plan_key(x: torch.Tensor, packed: torch.Tensor, bias: Optional[torch.Tensor], residual: Optional[torch.Tensor],
             stride: int, padding: int, relu: bool) -> Tuple:
    """Everything that decides a launch: the variant Triton compiles (dtypes, 16-byte alignment of the pointers,
    divisibility of the scalars, the constexprs), the grid and the tile. The output is allocated by the call, so
    always aligned; the packed weight is aligned by construction (is_packed)."""
    return (x.shape, x.stride(), x.dtype, x.get_device(), x.data_ptr() & 15, packed.shape, packed.stride(1),
            None if bias is None else (bias.stride(0), bias.data_ptr() & 15),
            None if residual is None else (residual.stride(), residual.data_ptr() & 15),
            stride, padding, relu, x.dtype is torch.float32 and torch._C._get_cudnn_allow_tf32())


def conv_bn_act(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], *, stride: int, padding: int,
                residual: Optional[torch.Tensor], relu: bool) -> torch.Tensor:
    """``relu(conv2d(x, weight, bias, stride, padding) + residual)`` on validated inputs (see checks.py).

    Returns a new tensor in x's dtype and memory format; an empty output (batch 0, or no output channels) is
    returned without a launch. Compiled kernels launch through a plan made by the first call per ``plan_key``
    (``launch.py``); raises tuning.NotWarmedUp if that first call happens during CUDA-graph capture, and
    NotImplementedError for bfloat16 under the Triton interpreter.
    """
    if _INTERPRETED:
        return _launch(x, weight, bias, stride, padding, residual, relu, make_plan=False)[0]
    packed = packed_weight(weight)
    key = plan_key(x, packed, bias, residual, stride, padding, relu)
    plan = _plans.get(key)
    if plan is None:
        if tuning.capturing(x.device):
            raise tuning.not_warmed_up("conv_bn_act", f"x {tuple(x.shape)} {x.dtype} strides {x.stride()}, "
                                                      f"weight {tuple(weight.shape)}")
        y, _plans[key] = _launch(x, packed, bias, stride, padding, residual, relu, make_plan=True)
        return y
    size, strides, dtype, device, run = plan
    y = torch.empty_strided(size, strides, dtype=dtype, device=device)
    if run is not None:
        run(x, packed, packed if bias is None else bias, x if residual is None else residual, y)
    return y


def _launch(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: int, padding: int,
            residual: Optional[torch.Tensor], relu: bool, make_plan: bool):
    """The call through ``kernel[grid]``, tuning first where the key is new: (output, (its size, strides, the
    launch plan repeating the launch, or None) if ``make_plan`` else None)."""
    if _INTERPRETED and x.dtype == torch.bfloat16:
        raise NotImplementedError("the Triton interpreter (TRITON_INTERPRET=1) cannot run tl.dot on bfloat16 "
                                  "operands (it multiplies their raw bits as integers); run bfloat16 convolutions "
                                  "with the triton backend on a GPU, or use float32/float16 here")
    out_shape = conv_out_shape(x.shape, weight.shape, stride, padding)
    out_format = output_memory_format(x)
    y = torch.empty(out_shape, dtype=x.dtype, device=x.device, memory_format=out_format)
    if y.numel() == 0:
        return y, (tuple(y.shape), y.stride(), y.dtype, y.device, None) if make_plan else None
    n, cin, h, w = x.shape
    cout, _, k, _ = weight.shape
    _, _, ho, wo = out_shape
    nhwc = out_format == torch.channels_last and (
        residual is None or residual.is_contiguous(memory_format=torch.channels_last))
    packed = packed_weight(weight)
    m = n * ho * wo
    args = (x, packed, bias if bias is not None else packed, residual if residual is not None else x, y,
            m, h, w, ho, wo, *x.stride(), bias.stride(0) if bias is not None else 0,
            *(residual.stride() if residual is not None else (0, 0, 0, 0)), *y.stride())
    flags = dict(CIN=cin, COUT=cout, COUT_PAD=packed.stride(1), KH=k, STRIDE=int(stride), PADDING=int(padding),
                 HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None, RELU=bool(relu), NHWC=nhwc,
                 INT64=needs_int64(*(t for t in (x, packed, y, residual) if t is not None)),
                 DOT_PRECISION=conv_dot_precision(x.dtype))

    def grid(config: triton.Config) -> Tuple[int, int]:
        return triton.cdiv(m, config.kwargs["BLOCK_M"]), triton.cdiv(cout, config.kwargs["BLOCK_N"])

    def run(config: triton.Config) -> None:
        _conv_bn_act_kernel[grid(config)](*args, **flags, **config.all_kwargs())

    configs = candidates(cin, cout, m, k if nhwc else 1)  # dense NHWC walks a kernel row as one K run
    config = tuning.pick("conv_bn_act", tuning_key(x, weight, stride, nhwc, m), configs, run, x.device)
    if not make_plan:
        run(config)
        return y, None
    plan = launch.make(_conv_bn_act_kernel, grid(config), args, {**flags, **config.all_kwargs()}, 5, x.device)
    return y, (tuple(y.shape), y.stride(), y.dtype, y.device, plan)
