"""The BatchNorm forms HRNet checkpoints and frameworks build, each made from a BatchNorm2d with its statistics, for
tests that every one of them folds.

mmcv is not installed here, so its class is written out with the same base class and behaviour:
``BatchNormXd`` mirrors mmcv's ``_BatchNormXd`` (mmcv 1.x ``mmcv/cnn/utils/sync_bn.py``; the same class lives in
mmengine's ``mmengine/model/utils.py``): a ``torch.nn.modules.batchnorm._BatchNorm`` whose ``_check_input_dim``
accepts any rank, what ``revert_sync_batchnorm`` turns each SyncBatchNorm into for single-device inference.
mmcv's ``SyncBN`` / ``BN`` config types are torch's own ``nn.SyncBatchNorm`` / ``nn.BatchNorm2d`` (registered in
``mmcv/cnn/bricks/norm.py``); ``SyncBNSubclass`` stands for wrappers that subclass them.
"""
from typing import Callable, Dict

import torch
import torch.nn as nn
from torchvision.ops.misc import FrozenBatchNorm2d


class BatchNormXd(nn.modules.batchnorm._BatchNorm):
    def _check_input_dim(self, input):  # no rank check, as mmcv's
        return


class SyncBNSubclass(nn.SyncBatchNorm):
    pass


def _like(cls: type) -> Callable[[nn.BatchNorm2d], nn.Module]:
    def make(bn: nn.BatchNorm2d) -> nn.Module:
        new = cls(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                  track_running_stats=bn.track_running_stats)
        new.load_state_dict(bn.state_dict())
        return new.train(bn.training)
    return make


def _frozen(bn: nn.BatchNorm2d) -> nn.Module:
    new = FrozenBatchNorm2d(bn.num_features, eps=bn.eps)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(new, name).copy_(getattr(bn, name))
    return new


FORMS: Dict[str, Callable[[nn.BatchNorm2d], nn.Module]] = {
    "BatchNorm2d": _like(nn.BatchNorm2d),
    "SyncBatchNorm": _like(nn.SyncBatchNorm),
    "FrozenBatchNorm2d": _frozen,
    "mmcv_BatchNormXd": _like(BatchNormXd),
    "SyncBatchNorm_subclass": _like(SyncBNSubclass),
}


def replace_batchnorms(model: nn.Module, form: str) -> nn.Module:
    """``model`` with every nn.BatchNorm2d replaced, in place, by the same statistics in ``form``."""
    make = FORMS[form]
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.BatchNorm2d:
                setattr(parent, name, make(child))
    return model
