"""The dispatch counter: exact op counts and bytes on graphs whose aten decomposition is known."""
import torch
import torch.nn as nn

import hrnet_fast
import hrnet_fast.ops  # noqa: F401  registers torch.ops.hrnet_fast.*
from hrnet_fast.counting import DispatchCounter, count_forward, written_bytes

FP32 = 4


def conv_bn_relu(cin: int = 3, cout: int = 4) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True)).eval()


def test_conv_bn_relu_in_eval_dispatches_four_known_ops():
    counts = count_forward(conv_bn_relu(), torch.randn(2, 3, 8, 8))
    # Under no_grad, conv2d becomes convolution, batch_norm becomes an empty reserve buffer plus
    # native_batch_norm, and the in-place ReLU is relu_.
    assert dict(counts.by_op) == {"aten.convolution.default": 1, "aten.empty.memory_format": 1,
                                  "aten.native_batch_norm.default": 1, "aten.relu_.default": 1}
    assert counts.ops == 4


def test_conv_bn_relu_bytes_are_three_activation_writes():
    counts = count_forward(conv_bn_relu(3, 4), torch.randn(2, 3, 8, 8))
    activation = 2 * 4 * 8 * 8 * FP32  # [2, 4, 8, 8] fp32
    # conv output, BN output, and ReLU rewriting the BN output in place; the empty reserve buffer and BN's
    # saved statistics are zero-size in eval.
    assert counts.bytes_written == 3 * activation


def test_bytes_scale_with_dtype():
    model = conv_bn_relu(3, 4).to(torch.bfloat16)
    counts = count_forward(model, torch.randn(2, 3, 8, 8, dtype=torch.bfloat16))
    assert counts.bytes_written == 3 * 2 * 4 * 8 * 8 * 2


def test_views_count_as_ops_but_write_nothing():
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad(), DispatchCounter() as counter:
        x.view(2, -1)
        x.transpose(0, 1)
        x[:, :2]
    assert counter.counts.ops == 3
    assert counter.counts.bytes_written == 0


def test_in_place_and_new_outputs_count_in_full():
    x = torch.randn(3, 5)
    with torch.no_grad(), DispatchCounter() as counter:
        torch.relu_(x)
        x.add(1)
    assert dict(counter.counts.by_op) == {"aten.relu_.default": 1, "aten.add.Tensor": 1}
    assert counter.counts.bytes_written == 2 * 3 * 5 * FP32


def test_custom_op_counts_once_without_its_insides():
    x, z = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 4, 4)
    with torch.no_grad(), DispatchCounter() as counter:
        # The torch backend composes upsample + add + ReLU inside the op; the counter sees only the op.
        torch.ops.hrnet_fast.multires_fuse(x, [z], [], True, "nearest", False, "torch")
    assert dict(counter.counts.by_op) == {"hrnet_fast.multires_fuse.default": 1}
    assert counter.counts.bytes_written == 2 * 4 * 8 * 8 * FP32


def test_written_bytes_of_multi_output_op():
    x = torch.randn(4, 6)
    values, indices = torch.ops.aten.max.dim(x, 1)
    assert written_bytes(torch.ops.aten.max.dim, (values, indices)) == 4 * FP32 + 4 * 8  # fp32 values, int64 indices


def test_reference_hrnet_w18_op_mix_matches_its_architecture():
    # DESIGN.md: a W18 forward has 325 convs, 325 BNs, 284 ReLUs, 177 adds and 31 nearest upsamples; the op
    # counts do not depend on the input size, so 64x64 keeps this fast.
    counts = count_forward(hrnet_fast.create_model("hrnet_w18").eval(), torch.randn(1, 3, 64, 64))
    by_op = counts.by_op
    assert by_op["aten.convolution.default"] == 325
    assert by_op["aten.native_batch_norm.default"] == 325
    assert by_op["aten.relu_.default"] + by_op["aten.relu.default"] == 284
    assert by_op["aten.add.Tensor"] == 177
    assert by_op["aten.upsample_nearest2d.default"] == 31
    # Each BN adds an empty reserve buffer; the head's pooling and classifier are mean, view, t and addmm.
    assert counts.ops == 325 + 325 + 325 + 284 + 177 + 31 + 4
