"""mmsegmentation's checkpoint layout for an HRNet + FCNHead segmentation model, written by hand (independently of
``hrnet_fast.to_mmseg``) so the tests can compare the two and write mmseg checkpoints themselves."""
from __future__ import annotations


def mmseg_by_hand(sd):
    """mmsegmentation's names for an official segmentation state dict, renamed here key by key (HRNet backbone,
    FCNHead ConvModule without conv bias, conv_seg): the head's conv bias folded into the BN mean."""
    out = {"backbone." + k: v for k, v in sd.items() if not k.startswith("last_layer.")}
    out["decode_head.convs.0.conv.weight"] = sd["last_layer.0.weight"]
    for f in ("weight", "bias", "running_var", "num_batches_tracked"):
        out[f"decode_head.convs.0.bn.{f}"] = sd[f"last_layer.1.{f}"]
    out["decode_head.convs.0.bn.running_mean"] = sd["last_layer.1.running_mean"] - sd["last_layer.0.bias"]
    out["decode_head.conv_seg.weight"] = sd["last_layer.3.weight"]
    out["decode_head.conv_seg.bias"] = sd["last_layer.3.bias"]
    return out
