import os

import torch

# Without a GPU, Triton kernels run on CPU tensors through the interpreter. Set before any kernel is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

# Accuracy comparisons run without TF32 (DESIGN.md, Numerics).
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs an NVIDIA GPU; none on this machine")
    for item in items:
        # The marker itself, not item.keywords: keywords also hold directory names (a checkout in .../gpu/).
        if item.get_closest_marker("gpu") is not None and not HAS_CUDA:
            item.add_marker(skip_gpu)
