"""hrnet_fast: HRNet inference made fast on NVIDIA GPUs (and CPUs) without changing its answers.

    import hrnet_fast
    model = hrnet_fast.create_model("hrnet_w18").eval()
    fast = hrnet_fast.convert(model, dtype=torch.float16)
"""
from .models import HighResolutionNet, PoseHighResolutionNet, SegHighResolutionNet, check_input_size
from . import cpu_features
from .calibrate import calibrate_bn
from .checkpoints import (CheckpointError, LoadReport, load_checkpoint, to_mmpose, to_mmpose_higher_hrnet,
                          to_mmpretrain, to_mmseg, to_mmseg_ocr, to_paddle)
from .convert import convert
from .ops import backend_info
from .pose import TopDownPose
from .profile import Profile, profile
from .registry import create_model, list_models, resolve_name
from .segment import Segmenter
from .warmup import warmup

__version__ = "0.1.0"
__all__ = [
    "HighResolutionNet", "PoseHighResolutionNet", "SegHighResolutionNet", "create_model", "list_models",
    "resolve_name", "check_input_size", "calibrate_bn", "load_checkpoint", "CheckpointError", "LoadReport",
    "to_mmpretrain", "to_mmpose", "to_mmpose_higher_hrnet", "to_mmseg", "to_mmseg_ocr", "to_paddle", "profile",
    "Profile", "convert", "backend_info", "warmup",
    "cpu_features", "TopDownPose", "Segmenter",
]
