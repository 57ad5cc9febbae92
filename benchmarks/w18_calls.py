"""The distinct fused-op calls of a converted HRNet-W18 forward: what the static GPU gates compile and what the
GPU check's op-level stage times. Read off a converted model by hooks, so they follow the conversion."""
from __future__ import annotations

from collections import Counter
from typing import Dict, List, Tuple


def w18_calls(input_size: Tuple[int, int] = (224, 224)) -> Tuple[List[Dict], List[Dict]]:
    """The distinct conv_bn_act and multires_fuse calls of a converted HRNet-W18 forward at batch 1.

    conv: dict(cin, cout, k, stride, padding, h, w, residual, relu, count); fuse: dict(c, h, w, low: [(h, w)],
    same: int, count). Shapes are read by hooks on a converted model run with the reference backend.
    """
    import torch

    import hrnet_fast
    from hrnet_fast.convert.fused import FusedConvBNAct, FusedHRFuse

    torch.manual_seed(0)
    model = hrnet_fast.convert(hrnet_fast.create_model("hrnet_w18").eval(), backend="torch")
    convs: Counter = Counter()
    fuses: Counter = Counter()

    def conv_hook(mod, args, kwargs):
        x = args[0]
        residual = kwargs.get("residual", args[1] if len(args) > 1 else None)
        cout, cin, k, _ = mod.weight.shape
        convs[(cin, cout, k, mod.stride, mod.padding, x.shape[2], x.shape[3], residual is not None, mod.relu)] += 1

    def fuse_hook(mod, args, out):
        fuses[(out.shape[1], out.shape[2], out.shape[3], tuple(mod.up_src), len(mod.down_src), mod.index)] += 1

    for mod in model.modules():
        if isinstance(mod, FusedConvBNAct):
            mod.register_forward_pre_hook(conv_hook, with_kwargs=True)
        elif isinstance(mod, FusedHRFuse):
            mod.register_forward_hook(fuse_hook)
    with torch.no_grad():
        model(torch.randn(1, 3, *input_size))
    conv_list = [dict(cin=c[0], cout=c[1], k=c[2], stride=c[3], padding=c[4], h=c[5], w=c[6], residual=c[7],
                      relu=c[8], count=n) for c, n in sorted(convs.items())]
    fuse_list = []
    for (c, h, w, up_src, n_same, index), n in sorted(fuses.items()):
        low = [(h >> (j - index), w >> (j - index)) for j in up_src]
        fuse_list.append(dict(c=c, h=h, w=w, low=low, same=n_same, count=n))
    return conv_list, fuse_list
