"""convert() folds BatchNorm in every form that is a per-channel affine map in eval mode (tests/bn_forms.py:
BatchNorm2d, SyncBatchNorm as the official segmentation repo and mmseg's SyncBN configs build it, torchvision's
FrozenBatchNorm2d, mmcv's _BatchNormXd, subclasses), placed directly after the conv or inside a Sequential(BN, ReLU);
a BN that normalises with batch statistics is left as it is, with the reason in the fusion report."""
import copy

import pytest
import torch
import torch.nn as nn
import torchvision

import hrnet_fast
from bn_forms import FORMS, replace_batchnorms
from hrnet_fast.models import SegHighResolutionNet
from official_hrnet import OfficialHRNet, extra
from tiny_hrnet import TINY
from tolerance import assert_model_matches

pytestmark = pytest.mark.usefixtures("one_thread")


def pixel_classes(y):
    return y.argmax(1)


def image(batch=2, size=(40, 48)):
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(3))


def tiny_segmenter() -> nn.Module:
    torch.manual_seed(0)
    return hrnet_fast.calibrate_bn(SegHighResolutionNet(TINY, num_classes=5), (48, 48), steps=2, batch=2)


@pytest.fixture(scope="module")
def baseline_counts():
    return hrnet_fast.convert(tiny_segmenter()).fusion_report().counts()


@pytest.mark.parametrize("form", FORMS)
def test_tiny_hrnet_with_every_bn_in_a_form_fuses_everything(form, baseline_counts):
    model = replace_batchnorms(tiny_segmenter(), form).eval()
    assert not any(type(m) is nn.BatchNorm2d for m in model.modules()) or form == "BatchNorm2d"
    fast = hrnet_fast.convert(model)
    report = fast.fusion_report()
    assert not report.unfused, str(report)
    assert report.counts() == baseline_counts
    assert_model_matches(model, fast, image(), decision=pixel_classes)


def _bn_relu_wrapped(model: nn.Module) -> nn.Module:
    """Every Sequential(Conv2d, BN, ReLU) as Sequential(Conv2d, Sequential(BN, ReLU)), HRNet-OCR's BNReLU helper
    (the same forward: a Sequential applies its modules in order)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Sequential) and len(child) == 3 and isinstance(child[0], nn.Conv2d) \
                    and isinstance(child[2], nn.ReLU) and not isinstance(child[1], nn.Sequential):
                setattr(parent, name, nn.Sequential(child[0], nn.Sequential(child[1], child[2])))
    return model


@pytest.mark.parametrize("form", ["SyncBatchNorm", "FrozenBatchNorm2d"])
def test_bn_relu_in_a_sequential_of_its_own_fuses(form, baseline_counts):
    model = _bn_relu_wrapped(replace_batchnorms(tiny_segmenter(), form)).eval()
    assert any(isinstance(m, nn.Sequential) and len(m) == 2 and isinstance(m[1], nn.ReLU) for m in model.modules())
    fast = hrnet_fast.convert(model)
    assert not fast.fusion_report().unfused, str(fast.fusion_report())
    assert fast.fusion_report().counts() == baseline_counts
    assert_model_matches(model, fast, image(), decision=pixel_classes)


def test_official_segmentation_as_shipped_with_syncbn():
    """HRNet-Semantic-Segmentation's bn_helper makes every BN an nn.SyncBatchNorm."""
    torch.manual_seed(0)
    model = hrnet_fast.calibrate_bn(OfficialHRNet(extra(18, "v1"), "segmentation", 19), (64, 64), steps=2, batch=2)
    expected = hrnet_fast.convert(model).fusion_report().counts()
    model = replace_batchnorms(model, "SyncBatchNorm").eval()
    fast = hrnet_fast.convert(model)
    assert not fast.fusion_report().unfused, str(fast.fusion_report())
    assert fast.fusion_report().counts() == expected
    assert_model_matches(model, fast, image(size=(64, 64)), decision=pixel_classes)
    assert_model_matches(model, fast, image(1, (64, 64)), decision=pixel_classes)


@pytest.mark.parametrize("form", FORMS)
def test_traced_cnn_folds_every_form(form):
    """A model that is not an HRNet goes through torch.fx: forms defined outside torch.nn stay leaves there."""
    torch.manual_seed(0)
    model = hrnet_fast.calibrate_bn(torchvision.models.resnet18(num_classes=10), (64, 64), steps=2, batch=2)
    model = replace_batchnorms(model, form).eval()
    fast = hrnet_fast.convert(model)
    counts = fast.fusion_report().counts()
    assert counts["conv+bn+add+relu"] == 8 and counts["conv+bn+relu"] == 8, str(fast.fusion_report())
    assert not any(e.pattern == type(m).__name__ for e in fast.fusion_report().unfused for m in model.modules()
                   if hrnet_fast.ops.folding.is_batchnorm(m)), str(fast.fusion_report())
    assert_model_matches(model, fast, image(2, (64, 64)))


def _first_block_bn(model: nn.Module) -> str:
    return "stage2.0.branches.0.0.bn1"


def _reasons(fast) -> dict:
    """Unfused entries by module path in the original model (the segmenter's report prefixes "backbone.")."""
    return {e.path.removeprefix("backbone."): e.detail for e in fast.fusion_report().unfused}


def test_bn_without_running_statistics_is_kept_with_its_reason():
    model = tiny_segmenter()
    path = _first_block_bn(model)
    parent, name = model.get_submodule(path.rsplit(".", 1)[0]), path.rsplit(".", 1)[1]
    setattr(parent, name, nn.BatchNorm2d(getattr(parent, name).num_features, track_running_stats=False))
    fast = hrnet_fast.convert(model.eval())
    reasons = _reasons(fast)
    assert "track_running_stats=False" in reasons[path], str(fast.fusion_report())
    assert_model_matches(model, fast, image(), decision=pixel_classes)  # it still normalises per batch


def test_bn_in_train_mode_is_not_folded():
    model = tiny_segmenter()
    path = _first_block_bn(model)
    model.get_submodule(path).train()
    fast = hrnet_fast.convert(model)
    reasons = _reasons(fast)
    block = path.rsplit(".", 1)[0]  # the block it is part of is not fused, for that reason
    assert "train mode" in reasons[block] and ".eval()" in reasons[block], str(fast.fusion_report())
    kept = [name for name, m in fast.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert any(name.endswith(path) for name in kept), kept  # not folded: the module itself is still there


class ConvModule(nn.Module):
    """mmcv's ConvModule (mmcv/cnn/bricks/conv_module.py), its attribute names and forward order: ``conv``, the norm
    layer under ``norm_name`` ("bn" for BN and SyncBN), ``activate`` when ``with_activation``, in ``order``; an
    explicit padding layer (``with_explicit_padding``) runs before the conv."""

    def __init__(self, cin, cout, bn, with_activation=True, explicit_padding=False):
        super().__init__()
        self.with_explicit_padding = explicit_padding
        if explicit_padding:
            self.padding_layer = nn.ReflectionPad2d(1)
        self.conv = nn.Conv2d(cin, cout, 3, padding=0 if explicit_padding else 1, bias=False)
        self.with_norm, self.norm_name = True, "bn"
        self.add_module("bn", bn)
        self.with_activation = with_activation
        if with_activation:
            self.activate = nn.ReLU(inplace=True)
        self.order = ("conv", "norm", "act")

    @property
    def norm(self):
        return getattr(self, self.norm_name)

    def forward(self, x, activate=True, norm=True):
        for layer in self.order:
            if layer == "conv":
                if self.with_explicit_padding:
                    x = self.padding_layer(x)
                x = self.conv(x)
            elif layer == "norm" and norm and self.with_norm:
                x = self.norm(x)
            elif layer == "act" and activate and self.with_activation:
                x = self.activate(x)
        return x


class ConvModuleNet(nn.Module):
    """Not traceable by torch.fx (data-dependent control flow), so only module structure can fuse it."""

    def __init__(self, form, **kwargs):
        super().__init__()
        self.blocks = nn.Sequential(*(ConvModule(c, 8, FORMS[form](nn.BatchNorm2d(8)), **kwargs) for c in (3, 8)))

    def forward(self, x):
        if x.sum() > float("inf"):
            return x
        return self.blocks(x)


def _calibrated(net):
    for m in net.modules():
        if hasattr(m, "running_var"):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.mark.parametrize("with_activation", [True, False], ids=("relu", "no-act"))
@pytest.mark.parametrize("form", ["SyncBatchNorm", "FrozenBatchNorm2d", "mmcv_BatchNormXd"])
def test_conv_module_with_any_bn_form_fuses(form, with_activation):
    torch.manual_seed(0)
    net = _calibrated(ConvModuleNet(form, with_activation=with_activation))
    fast = hrnet_fast.convert(net)
    pattern = "conv+bn+relu" if with_activation else "conv+bn"
    assert fast.fusion_report().counts()[pattern] == 2, str(fast.fusion_report())
    assert not fast.fusion_report().unfused or {e.pattern for e in fast.fusion_report().unfused} == {"torch.fx trace"}
    assert_model_matches(net, fast, image(2, (16, 16)))


def test_conv_module_with_explicit_padding_keeps_its_padding():
    """The ConvModule rule refuses it as a unit (its padding layer runs before the conv); traced on its own by
    torch.fx, its conv -> BN -> ReLU is fused behind the padding layer, which still runs."""
    torch.manual_seed(0)
    net = _calibrated(ConvModuleNet("SyncBatchNorm", explicit_padding=True))
    fast = hrnet_fast.convert(copy.deepcopy(net))
    report = fast.fusion_report()
    refused = [e for e in report.unfused if e.pattern == "ConvModule"]
    assert len(refused) == 2 and all("explicit padding" in e.detail for e in refused), str(report)
    assert {e.path for e in report.fused if e.pattern == "conv+bn+relu"} == {"blocks.0.conv", "blocks.1.conv"}
    assert sum(isinstance(m, nn.ReflectionPad2d) for m in fast.modules()) == 2
    assert_model_matches(net, fast, image(2, (16, 16)))
