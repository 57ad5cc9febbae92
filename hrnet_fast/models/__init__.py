"""Reference HRNet models in plain PyTorch: one shared backbone (``backbone.py``) and one module per task head
(``classification.py``, ``pose.py``, ``segmentation.py``). ``hrnet_fast.create_model`` builds them by name."""
from .backbone import (BLOCKS, BasicBlock, BilinearResize, Bottleneck, HighResolutionModule, HRNetBackbone, Stage,
                       branch_sizes, check_input_size, conv_bn, make_layer, make_transition)
from .classification import HEAD_CHANNELS, NUM_FEATURES, HighResolutionNet
from .pose import PoseHighResolutionNet
from .segmentation import SegHighResolutionNet

__all__ = ["BLOCKS", "BasicBlock", "BilinearResize", "Bottleneck", "HighResolutionModule", "HRNetBackbone", "Stage",
           "branch_sizes", "check_input_size", "conv_bn", "make_layer", "make_transition", "HEAD_CHANNELS",
           "NUM_FEATURES", "HighResolutionNet", "PoseHighResolutionNet", "SegHighResolutionNet"]
