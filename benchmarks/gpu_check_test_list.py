"""The GPU check's test subset: every GPU code path once, not every variant (the one place the node ids live).

``pytest -m gpu tests/`` is ~430 tests (66 full-size model variants, 225 multires_fuse shape cases ...): more than
a device lease's tests stage. This subset covers, at least once each:
  - every backend (triton, cuda, torch) x dtype (fp32, fp16, bf16) x layout (NCHW, channels_last) for both ops
    (test_gpu_hrnet_shapes for triton and cuda; the torch backend's test_matches_reference, which runs on the GPU
    when there is one); bilinear (segmentation) fusions on triton and cuda;
  - the extension's own CUDA kernels with cuDNN on and off, misaligned vector widths, a zero batch; the problems
    cuDNN's fused op refuses (the fallback); NaN/Inf, fp16 saturation, fp32 accumulation and denormals per backend;
  - converted models: W18 in fp16 replayed from CUDA graphs, bf16 and fp32 variants, the Triton and torch
    backends in CUDA graphs, graphs after moves and loads, captures beside a CUDA-calling thread, memory that stays
    flat over replays, no weight copies and the current stream per launch;
  - bad input on CUDA (tensors on two devices, before any kernel), and the device guards of a model on a second
    GPU (those skip, with their reason, on a one-GPU machine).
What is left out and why: the triton fuzz cases (each drawn shape compiles anew: minutes), the remaining model
variants (same kernels, other widths) and shape cases (covered on the CPU and under the Triton interpreter).

Chunks run as separate pytest processes, several at once (``gpu_check_tests.py``); each chunk's results land in
the stage's JSON as it ends, so a stage cut by its budget still says which chunks passed. Chunks come in priority
order. ``tests/test_gpu_check.py`` checks that pytest collects every id listed here.
"""
from __future__ import annotations

from typing import Dict, List

DTYPES = ("torch.float32", "torch.float16", "torch.bfloat16")
LAYOUTS = ("nchw", "channels_last")


def _every(prefix: str, backends=("triton", "cuda"), layouts=LAYOUTS) -> List[str]:
    return [f"{prefix}[{b}-{layout}-{d}]" for b in backends for layout in layouts for d in DTYPES]


CONV = "tests/test_conv_bn_act.py"
FUSE = "tests/test_multires_fuse.py"
EXT = "tests/test_extension.py"
SPECIAL = "tests/test_ops_special_values.py"

# The torch backend: one shape case per (dtype, layout), a different case each time.
_TORCH_CONV_CASES = ("1x3x13x17-18k3s2p1-relu", "3x18x13x17-18k3s1p1-res-relu", "2x72x8x6-144k3s1p0-res",
                     "1x144x5x7-18k1s2p0-res-relu", "1x18x64x48-36k3s2p1-relu", "1x36x7x7-72k1s1p0")
_TORCH_FUSE_CASES = ("3x36x16x24-up2.4.8-same1-relu", "1x3x64x48-up2.4.8.16-same4-id", "2x72x8x8-up8-same0-relu",
                     "1x144x4x6-upnone-same3-relu", "3x18x13x17-up1-same2-id", "1x18x7x7-up1-same1-relu")


def _torch_cases(prefix: str, cases) -> List[str]:
    combos = [(d, layout) for d in DTYPES for layout in LAYOUTS]
    return [f"{prefix}[torch-{d}-{layout}-{case}]" for (d, layout), case in zip(combos, cases)]


CHUNKS: Dict[str, List[str]] = {
    "conv_triton": _every(f"{CONV}::test_gpu_hrnet_shapes", ("triton",)) + [
        f"{CONV}::test_device_mix_raises_before_any_kernel"],
    "conv_cuda_torch": _every(f"{CONV}::test_gpu_hrnet_shapes", ("cuda",))
    + _torch_cases(f"{CONV}::test_matches_reference", _TORCH_CONV_CASES),
    "models_graphs": [
        "tests/test_convert.py::test_gpu_every_variant[hrnet_w18-True-dtype1]",          # W18 fp16, CUDA graphs
        "tests/test_convert.py::test_gpu_every_variant[hrnet_w18_small_v2-True-dtype2]",  # bf16, CUDA graphs
        "tests/test_convert.py::test_gpu_every_variant[hrnet_w18_ssld-False-dtype0]",     # fp32, bias-free head
        "tests/test_convert.py::test_cuda_graph_outputs_are_not_overwritten",
        "tests/test_cuda_graph_backends.py::test_gpu_backend_replays_from_a_cuda_graph[triton-torch.float32]",
        "tests/test_cuda_graph_backends.py::test_gpu_backend_replays_from_a_cuda_graph[triton-torch.float16]",
        "tests/test_cuda_graph_backends.py::test_gpu_backend_replays_from_a_cuda_graph[triton-torch.bfloat16]",
        "tests/test_cuda_graph_backends.py::test_gpu_backend_replays_from_a_cuda_graph[torch-torch.float16]",
        "tests/test_cuda_graph.py::test_gpu_triton_backend_under_graphs[bf16]",  # tuned choices read from the file
        "tests/test_cuda_graph.py::test_gpu_default_replays_graphs_per_batch_bucket",
        "tests/test_cuda_graph.py::test_gpu_graphs_follow_moves_and_loads",
        "tests/test_cuda_graph.py::test_gpu_capture_tolerates_cuda_calls_from_another_thread",
        "tests/test_cuda_graph.py::test_gpu_model_on_the_second_device[eager-cuda]",
        "tests/test_cuda_graph.py::test_gpu_model_on_the_second_device[cuda_graph-triton]",
        "tests/test_converted_model.py::test_device_moves_between_cpu_and_cuda",
        "tests/test_soak.py::test_cuda_graph_replays_keep_memory_flat",
    ],
    "fuse_triton": _every(f"{FUSE}::test_gpu_hrnet_shapes", ("triton",)) + [
        f"{FUSE}::test_gpu_bilinear_segmentation_shapes[triton-nchw-torch.float32]",
        f"{FUSE}::test_gpu_bilinear_segmentation_shapes[triton-channels_last-torch.float16]",
        f"{FUSE}::test_gpu_bilinear_segmentation_shapes[triton-mixed-torch.bfloat16]",
        f"{FUSE}::test_device_mix_raises_before_any_kernel"],
    "fuse_cuda_torch": _every(f"{FUSE}::test_gpu_hrnet_shapes", ("cuda",)) + [
        f"{FUSE}::test_gpu_bilinear_segmentation_shapes[cuda-channels_last-torch.float32]",
        f"{FUSE}::test_gpu_bilinear_segmentation_shapes[cuda-mixed-torch.float16]",
        f"{FUSE}::test_gpu_bilinear_segmentation_shapes[cuda-nchw-torch.bfloat16]",
        f"{FUSE}::test_bilinear_matches_reference[torch-torch.float16-channels_last-3x18x13x17-from7x9-same2-id-"
        f"align_corners]"]
    + _torch_cases(f"{FUSE}::test_matches_reference", _TORCH_FUSE_CASES),
    "extension_cudnn": [
        f"{EXT}::test_cuda_conv_bn_act_matches_reference[torch.float32-nchw-cudnn]",
        f"{EXT}::test_cuda_conv_bn_act_matches_reference[torch.float32-channels_last-no_cudnn]",
        f"{EXT}::test_cuda_conv_bn_act_matches_reference[torch.float16-channels_last-cudnn]",
        f"{EXT}::test_cuda_conv_bn_act_matches_reference[torch.float16-nchw-no_cudnn]",
        f"{EXT}::test_cuda_conv_bn_act_matches_reference[torch.bfloat16-channels_last-cudnn]",
        f"{EXT}::test_cuda_conv_bn_act_matches_reference[torch.bfloat16-nchw-no_cudnn]",
        f"{EXT}::test_cuda_multires_fuse_vector_widths[torch.float32-offset1]",
        f"{EXT}::test_cuda_multires_fuse_vector_widths[torch.float16-offset2]",
        f"{EXT}::test_cuda_multires_fuse_vector_widths[torch.bfloat16-offset4]",
        f"{EXT}::test_cuda_multires_fuse_matches_reference[torch.float32-nchw-0x18x8x8-up2-same1]",
        f"{EXT}::test_cuda_multires_fuse_matches_reference[torch.float16-channels_last-1x36x64x48-up2.4.8.16-same4]",
        f"{EXT}::test_cuda_multires_fuse_matches_reference[torch.bfloat16-strided-3x18x13x17-up1-same2]",
        f"{EXT}::test_cuda_multires_fuse_matches_reference[torch.float16-nchw-bilinear-align-3x18x13x17-up7x9.13x4-"
        f"same2]",
        f"{EXT}::test_cuda_rejects_inputs_on_two_devices",
        # The problems cuDNN's fused op refuses on some versions: each must run (fused or through the fallback).
        "tests/test_cuda_conv.py::test_gpu_every_problem_runs_and_matches[3-torch.float32-nchw-tf32_off]",
        "tests/test_cuda_conv.py::test_gpu_every_problem_runs_and_matches[18-torch.float16-channels_last-tf32_off]",
        "tests/test_cuda_conv.py::test_gpu_every_problem_runs_and_matches[36-torch.float16-channels_last-tf32_on]",
        "tests/test_cuda_conv.py::test_gpu_every_problem_runs_and_matches[36-torch.float32-nchw-tf32_on]",
    ],
    "launches_special_values": [
        "tests/test_cuda_launches.py::test_gpu_w18_forward_copies_no_weight[torch.float16-padded]",
        "tests/test_cuda_launches.py::test_gpu_ops_launch_on_the_current_stream[cuda]",
        "tests/test_cuda_launches.py::test_gpu_ops_launch_on_the_current_stream[triton]",
        f"{SPECIAL}::test_conv_bn_act_nan_inf_propagate[cuda-gpu-relu]",
        f"{SPECIAL}::test_conv_bn_act_nan_inf_propagate[triton-gpu-no-relu]",
        f"{SPECIAL}::test_multires_fuse_nan_inf_propagate[cuda-gpu-no-relu]",
        f"{SPECIAL}::test_multires_fuse_nan_inf_propagate[triton-gpu-relu]",
        f"{SPECIAL}::test_conv_bn_act_fp16_saturates_like_pytorch[triton-gpu]",
        f"{SPECIAL}::test_multires_fuse_fp16_saturates_like_pytorch[cuda-gpu]",
        f"{SPECIAL}::test_conv_bn_act_fp16_accumulates_in_fp32[cuda-gpu]",
        f"{SPECIAL}::test_multires_fuse_fp16_accumulates_in_fp32[triton-gpu]",
        f"{SPECIAL}::test_conv_bn_act_fp32_denormals[triton-gpu]",
        f"{SPECIAL}::test_multires_fuse_fp32_denormals[cuda-gpu]",
        "tests/test_fuzz_conv_bn_act.py::test_conv_bn_act_fuzz[cuda-gpu]",
        "tests/test_fuzz_multires_fuse.py::test_multires_fuse_fuzz[cuda-gpu]",
    ],
}


def all_ids() -> List[str]:
    return [i for ids in CHUNKS.values() for i in ids]
