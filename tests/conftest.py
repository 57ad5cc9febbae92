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


@pytest.fixture(scope="module")
def one_thread():
    """Batch-1 forwards of small tensors gain nothing from intra-op threads, and on a shared 2-core machine
    oversubscribed threads make them many times slower. Use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
