"""Channel padding of a converted HRNet: every channel count of its fused convs rounded up to a multiple.

Why: HRNet's branch widths (18/36/72/144 for W18, 30/60/... for W30, 44/88/... for W44) and its 3-channel image
are not what GPU conv kernels want. cuDNN has no fused conv+bias(+add)+ReLU engine for fp16/bf16 channels_last
convs whose channel counts are not multiples of 8 (those convs then run as a convolution plus a separate epilogue
kernel: about 150 of W18's 258 ReLU convs), and Triton's tensor-core tiles want K and N multiples of 16.

Why the answer does not change: a map of true width w is carried at width p(w) = ceil(w / m) * m everywhere, its
channels w..p(w)-1 exactly zero. A padded output channel has zero weights and a zero bias, so it is relu(0) = 0
(and a zero residual keeps it zero); a padded input channel meets zero weight columns, so it adds exactly 0.
What sits between the fused convs is per channel: residual adds, ``multires_fuse`` (its inputs all have the
target branch's width, so one padded width), its resizes, the model's own adds of same-width maps, pooling. So
the unpadded channels equal the unpadded model's up to summation order, and the padded ones are zero.

Where maps leave the padded world:
- the image: the stem conv (``ImagePaddingConv``) takes the unpadded image and makes the zero-padded copy in the
  layout the activations have, which is the copy ``ConvertedModel`` would otherwise make to lay the input out;
- the head's last conv (classification ``final_layer``, the pose heatmap conv, the segmentation classifier)
  keeps its output width: the pooling, ``Linear`` and the returned heatmaps / logits see the model's own widths,
  and no output has to be sliced;
- the feature maps a ``features_only`` model returns: sliced back to their widths by ``ChannelPadding``.

What it pads is recognised by structure: an HRNet (``rewrite.find_hrnet``) that is the model itself or the
backbone of the fused segmentation model, whose head is one of the above, and every module in it either a fused
module the converter made or a per-channel one (``_PER_CHANNEL``). Anything else (an HRNet inside another model,
whose forward may concatenate, split or reshape channels; a conv left unfused; an unknown layer) is left
unpadded, with the reason in the fusion report.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Set, Tuple, Union

import torch
import torch.nn as nn

from ..ops.backends import select
from .fused import FUSED_MODULES, FoldedConv, FusedBlock, FusedBranch, FusedConvBNAct, FusedHRModule
from .heads import FusedSegHead, FusedSegmentation
from .report import FusionReport

# Modules whose forward treats every channel alike (so zero channels stay zero and never reach a real one), or
# that only hold others (ModuleList; nn.Sequential itself and timm's SequentialList, which pass a list along).
_PER_CHANNEL = (nn.Identity, nn.ReLU, nn.Dropout, nn.Dropout2d, nn.Flatten, nn.AdaptiveAvgPool2d,
                nn.AdaptiveMaxPool2d, nn.ModuleList)
_PER_CHANNEL_NAMES = ("SequentialList",)
# What a classification HRNet runs after its final_layer (ours, timm's, the official one): it reads that conv's
# output, which keeps its width, so it sees no padded map.
_AFTER_FINAL_LAYER = ("global_pool", "head_drop", "classifier")


def check_pad_channels(value: Any) -> None:
    """Raises for a ``pad_channels`` that is not None or an int >= 1."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"pad_channels must be an int >= 1 (the multiple channel counts are padded to; 1 = no "
                        f"padding) or None (the multiple the model's device and backend want), got "
                        f"{type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"pad_channels must be >= 1 (the multiple channel counts are padded to; 1 = no padding), "
                         f"got {value}")


def default_multiple(device: torch.device, backend: Optional[str]) -> int:
    """The multiple the GPU kernels want: 16 for Triton's tensor-core tiles, 8 for cuDNN (the cuda and torch
    backends); 1 on CPU, where oneDNN blocks channels itself."""
    if device.type != "cuda":
        return 1
    return 16 if select("conv_bn_act", device, backend) == "triton" else 8


def padded_width(width: int, multiple: int) -> int:
    return -(-width // multiple) * multiple


@dataclass
class ChannelPadding:
    """What ``pad_model`` did: the multiple asked for, each width it changed, the image's channels (true,
    padded) where the stem pads them, and the true widths of the maps a ``features_only`` model returns."""
    multiple: int = 1
    widths: Dict[int, int] = field(default_factory=dict)
    image: Optional[Tuple[int, int]] = None
    outputs: Optional[List[int]] = None
    refused: Optional[str] = None  # why the model was left unpadded

    @property
    def pads_image(self) -> bool:
        return self.image is not None

    def describe(self) -> str:
        """E.g. "channels 18->24, 36->40, image 3->8"."""
        if self.refused is not None:
            return f"not padded: {self.refused}"
        parts = [f"{w}->{p}" for w, p in sorted(self.widths.items())]
        text = "channels " + ", ".join(parts) if parts else "no channel count changed"
        return text + (f", image {self.image[0]}->{self.image[1]}" if self.image else "")

    def repr_suffix(self) -> str:
        """What ``ConvertedModel.extra_repr`` says of the padding ("" where none was asked for)."""
        return f", pad_channels={self.multiple} ({self.describe()})" if self.multiple > 1 else ""

    def slice_outputs(self, out: Any, dense: bool) -> Any:
        """The returned feature maps at their own widths: views where ``dense`` is False (the caller copies them
        into its layout anyway), else dense copies in the map's layout."""
        if self.outputs is None:
            return out
        if not isinstance(out, (list, tuple)) or len(out) != len(self.outputs):
            raise RuntimeError(f"the channel-padded model returned {type(out).__name__} where {len(self.outputs)} "
                               f"feature maps of {self.outputs} channels were expected")
        maps = []
        for t, width in zip(out, self.outputs):
            if t.shape[1] not in (width, padded_width(width, self.multiple)):
                raise RuntimeError(f"a returned feature map has {t.shape[1]} channels where {width} (padded: "
                                   f"{padded_width(width, self.multiple)}) were expected")
            if t.shape[1] != width:
                t = t[:, :width]
                if dense:
                    t = t.contiguous(memory_format=torch.channels_last if t.stride(1) == 1 else
                                     torch.contiguous_format)
            maps.append(t)
        return type(out)(maps)


class ImagePaddingConv(FusedConvBNAct):
    """The stem conv of a channel-padded model: takes the unpadded image and pads it with zero channels in the
    one copy that also lays it out as the activations are (see the module docstring)."""

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None,
                residual_is_free: bool = False) -> torch.Tensor:
        return super().forward(pad_image(x, self._buffers["weight"].shape[1], self.channels_last), residual,
                               residual_is_free)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", takes the image unpadded"


def pad_image(x: torch.Tensor, channels: int, channels_last: bool) -> torch.Tensor:
    """``x`` [N, C, H, W] with zero channels C..channels-1, in the given layout."""
    n, c, h, w = x.shape
    out = torch.empty((n, channels, h, w), dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    out[:, c:].zero_()
    out[:, :c].copy_(x)
    return out


@dataclass
class _Plan:
    stem: FusedConvBNAct
    outlets: Set[int]              # id() of the head convs whose output width stays
    outputs: Optional[List[int]]   # features_only: the true widths of the returned maps


_HRNET_PARTS = ("conv1", "conv2", "layer1", "transition1", "transition2", "transition3", "stage2", "stage3", "stage4")


def _rewritten_hrnet(m: nn.Module) -> bool:
    """HRNet's layout after the rewrite (its stem BNs are Identity by then, so ``rewrite.is_hrnet`` no longer
    holds)."""
    return all(hasattr(m, a) for a in _HRNET_PARTS)


def _is_features_model(net: nn.Module) -> bool:
    return getattr(net, "features_only", False) is True or type(net).__name__ == "HighResolutionNetFeatures"


def _last_conv(m: Any) -> Optional[FusedConvBNAct]:
    """The conv writing a fused branch's output (its last block's last conv)."""
    if isinstance(m, FusedBranch) and len(m) and isinstance(m[-1], FusedBlock):
        return m[-1].convs[-1]
    return None


def _returned_widths(net: nn.Module) -> Union[List[int], str]:
    """The widths of the maps a features_only HRNet returns, in order, read off the convs that write them: the
    stem (index 0), then each branch's incre module or, without them, stage 4's branch (indices 1..4). (Not from
    ``feature_info``: timm's gives the stem 64 channels whatever its width.) Ours returns them in ``out_indices``
    order, timm's by increasing index."""
    last = net.stage4[-1] if len(net.stage4) else None
    sources = list(net.incre_modules) if net.incre_modules is not None else \
        list(last.branches) if isinstance(last, FusedHRModule) else []
    convs = [net.conv1] + [_last_conv(s) for s in sources]
    if len(convs) != 5 or not all(isinstance(c, FusedConvBNAct) for c in convs):
        return "the returned feature maps are not the stem's and four fused branches' outputs"
    order = getattr(net, "out_indices", None)
    order = sorted(net.feature_info.out_indices) if order is None else order
    return [convs[i].weight.shape[0] for i in order]


def _plan(inner: nn.Module) -> Union[_Plan, str]:
    """What to pad in ``inner`` (the rewritten model), or why it cannot be padded safely."""
    if isinstance(inner, FusedSegmentation):
        net, outlets, outputs = inner.backbone, {id(inner.head.classifier)}, None
        if not isinstance(inner.head.classifier, FusedConvBNAct):
            return "the segmentation classifier is not a fused conv"
    else:
        net = inner
        if not _rewritten_hrnet(net):
            if _rewritten_hrnet(getattr(inner, "backbone", None)):
                return (f"the HRNet is the backbone of a {type(inner).__name__}, whose forward may treat channels "
                        f"in ways padding cannot follow")
            return "only HRNet-structured models are padded"
        if _is_features_model(net):
            outlets, outputs = set(), _returned_widths(net)
            if isinstance(outputs, str):
                return outputs
        else:
            final = getattr(net, "final_layer", None)
            if not isinstance(final, FusedConvBNAct):
                return "the head is neither a features_only output, a final_layer conv nor the segmentation head"
            outlets, outputs = {id(final)}, None
    stem = getattr(net, "conv1", None)
    if not isinstance(stem, FusedConvBNAct):
        return "the stem conv is not a fused conv"
    unpadded = set()
    if id(getattr(net, "final_layer", None)) in outlets:
        unpadded = {id(m) for a in _AFTER_FINAL_LAYER if isinstance(getattr(net, a, None), nn.Module)
                    for m in getattr(net, a).modules()}
    for name, m in inner.named_modules():
        if m is inner or m is net or id(m) in unpadded or \
                isinstance(m, FUSED_MODULES + (FusedSegHead, FusedSegmentation)) and not isinstance(m, FoldedConv):
            continue
        if isinstance(m, _PER_CHANNEL) or type(m).__name__ in _PER_CHANNEL_NAMES or \
                type(m) is nn.Sequential:
            continue
        return f"{name} ({type(m).__name__}) is not a layer padding knows to treat every channel alike"
    return _Plan(stem, outlets, outputs)


def _pad_conv(conv: FusedConvBNAct, cin: int, cout: int) -> None:
    """Zero-pads ``conv``'s weight to [cout, cin, k, k] and its bias to [cout] (see the module docstring)."""
    weight, bias = conv._buffers["weight"], conv._buffers["bias"]
    co, ci = weight.shape[:2]
    new_weight = weight.new_zeros((cout, cin) + tuple(weight.shape[2:]))
    new_weight[:co, :ci] = weight
    new_bias = bias.new_zeros(cout)
    new_bias[:co] = bias
    conv.weight, conv.bias = new_weight, new_bias
    conv._prepared.clear()


def pad_model(inner: nn.Module, multiple: int, report: FusionReport) -> ChannelPadding:
    """Pads ``inner``'s fused convs to channel counts that are multiples of ``multiple`` (in place), or leaves
    it as it is and says why in ``report``. Call it before the weights are laid out (``_store_weights``)."""
    result = ChannelPadding(multiple)
    if multiple == 1:
        return result
    plan = _plan(inner)
    if isinstance(plan, str):
        report.skip("", "channel padding", f"not padded to multiples of {multiple}: {plan}")
        result.refused = plan
        return result
    image = plan.stem.weight.shape[1]
    for m in inner.modules():
        if isinstance(m, FusedConvBNAct):
            cout, cin = m.weight.shape[:2]
            pout = cout if id(m) in plan.outlets else padded_width(cout, multiple)
            pin = padded_width(cin, multiple)
            maps = ((cout, pout),) if m is plan.stem else ((cout, pout), (cin, pin))  # the stem reads the image
            result.widths.update({w: p for w, p in maps if p != w})
            if (pout, pin) != (cout, cin):
                _pad_conv(m, pin, pout)
    if padded_width(image, multiple) != image:
        result.image = (image, padded_width(image, multiple))
        # The same state, one step more in its forward; swapping the instance's class (not patching the class)
        # keeps its state_dict keys, hooks and place in the model.
        plan.stem.__class__ = ImagePaddingConv
    result.outputs = plan.outputs
    report.add("", f"channel padding to multiples of {multiple}: {result.describe()}")
    return result
