"""hrnet_fast: HRNet inference made fast on NVIDIA GPUs (and CPUs) without changing its answers.

    import hrnet_fast
    model = hrnet_fast.create_model("hrnet_w18").eval()
    fast = hrnet_fast.convert(model, dtype=torch.float16)
"""
from .models import HighResolutionNet, check_input_size
from .calibrate import calibrate_bn
from .convert import convert
from .ops import backend_info
from .registry import create_model, list_models, resolve_name

__version__ = "0.1.0"
__all__ = ["HighResolutionNet", "create_model", "list_models", "resolve_name", "check_input_size", "backend_info", "calibrate_bn", "convert"]
