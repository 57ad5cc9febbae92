"""Checkpoint loading in every format, from checkpoints written here (no weights can be downloaded).

Expected key names and shapes below are typed from the mmpretrain and PaddleClas model sources, not computed by
hrnet_fast, so a wrong mapping fails them.
"""
import pickle

import pytest
import torch

from hrnet_fast import HighResolutionNet, calibrate_bn, create_model
from hrnet_fast.registry import CONFIGS
from hrnet_fast.checkpoints import (CheckpointError, detect_format, fuse_term_index, identify_variant,
                                    load_checkpoint, to_mmpretrain, to_paddle)

SIZE = (64, 64)


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Every parameter random (head-conv biases and BN affine too), BN statistics calibrated."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # BN scales around 1; BN shifts and conv/linear biases around 0
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
    return calibrate_bn(model, SIZE, steps=1, batch=2)


@pytest.fixture(scope="module")
def w18_ssld():
    """Bias-free head convs: exports to mmpretrain/PaddleClas without folding, so round trips are bit-exact."""
    return randomise(create_model("hrnet_w18_ssld"))


@pytest.fixture(scope="module")
def small_no_bias():
    """The small layout with bias-free head convs: a cheap model for exact round trips."""
    return randomise(HighResolutionNet(CONFIGS["hrnet_w18_small"], num_classes=10, head_conv_bias=False))


@pytest.fixture(scope="module")
def small():
    return randomise(create_model("hrnet_w18_small"))


@pytest.fixture(scope="module")
def w18_ssld_zeros():
    """The hrnet_w18_ssld state dict with zero values: for name and shape checks."""
    with torch.device("meta"):
        model = create_model("hrnet_w18_ssld")
    return {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def image():
    return torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(1))


def logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


def save_pdparams(state, path, protocol=4):
    state = dict(state)
    state["StructuredToParameterName@@"] = {k: f"param_{i}" for i, k in enumerate(state)}  # as paddle.save adds
    with open(path, "wb") as f:
        pickle.dump(state, f, protocol=protocol)


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


# ------------------------------------------------------------------------------------------- timm / official


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "module_prefix", "legacy_format"])
def test_timm_checkpoint_file_round_trip(small, image, tmp_path, wrap):
    sd = small.state_dict()
    obj = {"plain": sd, "legacy_format": sd, "state_dict": {"state_dict": sd, "epoch": 3},
           "model": {"model": sd}, "module_prefix": {f"module.{k}": v for k, v in sd.items()}}[wrap]
    path = tmp_path / "hrnet.pth"
    torch.save(obj, path, _use_new_zipfile_serialization=wrap != "legacy_format")
    fresh = create_model("hrnet_w18_small")
    report = load_checkpoint(fresh, path)
    assert report.format == "timm"
    assert_same_state(fresh, small)
    torch.testing.assert_close(logits(fresh, image), logits(small, image), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ mmpretrain


def test_mmpretrain_names_follow_mmpretrain(w18_ssld_zeros):
    mm = to_mmpretrain(w18_ssld_zeros)
    expected_shapes = {
        "backbone.conv1.weight": [64, 3, 3, 3],
        "backbone.bn1.running_var": [64],
        "backbone.conv2.weight": [64, 64, 3, 3],
        "backbone.layer1.0.downsample.0.weight": [256, 64, 1, 1],
        "backbone.layer1.3.bn3.weight": [256],
        "backbone.transition1.0.0.weight": [18, 256, 3, 3],
        "backbone.transition1.1.0.0.weight": [36, 256, 3, 3],
        "backbone.transition3.3.0.0.weight": [144, 72, 3, 3],
        "backbone.stage3.3.branches.2.3.conv2.weight": [72, 72, 3, 3],
        "backbone.stage4.2.fuse_layers.0.3.0.weight": [18, 144, 1, 1],
        "backbone.stage4.2.fuse_layers.3.0.2.0.weight": [144, 18, 3, 3],
        "backbone.stage4.2.fuse_layers.3.0.1.1.running_mean": [18],
        "neck.0.increase_layers.3.0.downsample.0.weight": [1024, 144, 1, 1],
        "neck.0.increase_layers.0.0.conv2.weight": [32, 32, 3, 3],
        "neck.0.downsample_layers.0.conv.weight": [256, 128, 3, 3],
        "neck.0.downsample_layers.2.bn.num_batches_tracked": [],
        "neck.0.final_layer.conv.weight": [2048, 1024, 1, 1],
        "neck.0.final_layer.bn.running_var": [2048],
        "head.fc.weight": [1000, 2048],
        "head.fc.bias": [1000],
    }
    assert {k: list(mm[k].shape) for k in expected_shapes} == expected_shapes
    assert not [k for k in mm if k.startswith("neck.0.") and k.endswith("conv.bias")]
    assert len(mm) == len(w18_ssld_zeros)


def test_mmpretrain_round_trip_is_exact(w18_ssld, image, tmp_path):
    path = tmp_path / "hrnet-w18-ssld_mmcls.pth"
    torch.save({"meta": {"CLASSES": ["a", "b"], "mmcls_version": "0.25.0"},
                "state_dict": to_mmpretrain(w18_ssld.state_dict())}, path)
    fresh = create_model("HRNet-W18 (ssld)")
    assert load_checkpoint(fresh, path).format == "mmpretrain"
    assert_same_state(fresh, w18_ssld)
    torch.testing.assert_close(logits(fresh, image), logits(w18_ssld, image), rtol=0, atol=0)


def test_mmpretrain_into_model_with_head_conv_bias(small, image):
    """mmpretrain head convs have no bias: exporting folds it into BN, loading sets it to zero."""
    sd = small.state_dict()
    mm = to_mmpretrain(sd)
    torch.testing.assert_close(mm["neck.0.final_layer.bn.running_mean"],
                               sd["final_layer.1.running_mean"] - sd["final_layer.0.bias"])
    fresh = create_model("hrnet_w18_small")
    load_checkpoint(fresh, mm)
    got = fresh.state_dict()
    for k in ("downsamp_modules.0.0.bias", "downsamp_modules.2.0.bias", "final_layer.0.bias"):
        assert got[k].abs().max() == 0, k
    # Same function, up to the rounding of the folded mean.
    torch.testing.assert_close(logits(fresh, image), logits(small, image))


# ------------------------------------------------------------------------------------------------ PaddleClas


PADDLE_W18_SHAPES = {
    "legendary": {
        "conv_layer1_1.conv.weight": [64, 3, 3, 3],
        "conv_layer1_2.bn._variance": [64],
        "layer1.0.conv_down.conv.weight": [256, 64, 1, 1],
        "layer1.3.conv3.bn._mean": [256],
        "conv_tr1_1.conv.weight": [18, 256, 3, 3],
        "conv_tr1_2.conv.weight": [36, 256, 3, 3],
        "conv_tr2.conv.weight": [72, 36, 3, 3],
        "conv_tr3.bn.weight": [144],
        "st2.stage_func_list.0.basic_block_list.1.3.conv2.bn._mean": [36],
        "st2.stage_func_list.0.fuse_func.residual_func_list.1.conv.weight": [36, 18, 3, 3],
        # stage 3 terms: (0,1) (0,2) (1,0) (1,2) …: the fourth is branch 2 -> 1 upsample
        "st3.stage_func_list.3.fuse_func.residual_func_list.3.conv.weight": [36, 72, 1, 1],
        # stage 4 has 16 terms; (2,0) is a two-step chain 18 -> 18 -> 72
        "st4.stage_func_list.0.fuse_func.residual_func_list.6.conv.weight": [18, 18, 3, 3],
        "st4.stage_func_list.0.fuse_func.residual_func_list.7.conv.weight": [72, 18, 3, 3],
        "st4.stage_func_list.2.fuse_func.residual_func_list.15.conv.weight": [144, 72, 3, 3],
        "st4.stage_func_list.2.basic_block_list.3.3.conv1.conv.weight": [144, 144, 3, 3],
        "last_cls.func_list.3.conv_down.bn.weight": [1024],
        "last_cls.func_list.0.conv1.conv.weight": [32, 18, 1, 1],
        "cls_head_conv_list.2.conv.weight": [1024, 512, 3, 3],
        "conv_last.conv.weight": [2048, 1024, 1, 1],
        "fc.weight": [2048, 1000],
        "fc.bias": [1000],
    },
    "model_zoo": {
        "conv_layer1_1._conv.weight": [64, 3, 3, 3],
        "la1.bb_layer2_1.conv_down._conv.weight": [256, 64, 1, 1],
        "la1.bb_layer2_4.conv3._batch_norm._variance": [256],
        "tr1.transition_tr1_layer_1._conv.weight": [18, 256, 3, 3],
        "tr1.transition_tr1_layer_2._conv.weight": [36, 256, 3, 3],
        "tr3.transition_tr3_layer_4._batch_norm._mean": [144],
        "st2.stage_st2_1.fuse_func.residual_st2_1_layer_1_2._conv.weight": [18, 36, 1, 1],
        "st4.stage_st4_3.branches_func.bb_st4_3_branch_layer_4_4.conv2._conv.weight": [144, 144, 3, 3],
        "st4.stage_st4_1.fuse_func.residual_st4_1_layer_4_1_3._conv.weight": [144, 18, 3, 3],
        "st4.stage_st4_1.fuse_func.residual_st4_1_layer_4_1_1._conv.weight": [18, 18, 3, 3],
        "last_cls.conv_cls_head_conv_4.conv3._conv.weight": [1024, 256, 1, 1],
        "cls_head_add3._conv.weight": [1024, 512, 3, 3],
        "conv_last._batch_norm._variance": [2048],
        "out.weight": [2048, 1000],
    },
    "legendary_v1": {
        "conv_layer1_1._batch_norm.weight": [64],
        "tr1_1._conv.weight": [18, 256, 3, 3],
        "tr2._batch_norm._mean": [72],
        "st3.stage_func_list.1.basic_block_list.0.0.conv1._conv.weight": [18, 18, 3, 3],
        "cls_head_conv_list.0._conv.weight": [256, 128, 3, 3],
        "out.bias": [1000],
    },
}


@pytest.mark.parametrize("spelling", list(PADDLE_W18_SHAPES))
def test_paddle_names_follow_paddleclas(w18_ssld_zeros, spelling):
    pd = to_paddle(w18_ssld_zeros, spelling)
    expected = PADDLE_W18_SHAPES[spelling]
    assert {k: list(pd[k].shape) for k in expected} == expected
    assert not [k for k in pd if "num_batches_tracked" in k]
    # Each conv+BN pair is one unit of five arrays; plus fc weight and bias.
    num_convs = sum(k.endswith(".weight") and v.dim() == 4 for k, v in w18_ssld_zeros.items())
    assert len(pd) == 5 * num_convs + 2


def test_paddle_fuse_term_order():
    # FuseLayers appends, for each output branch i, the terms of j = 0..n-1 (j != i), i - j steps when j < i.
    assert [fuse_term_index(3, i, j, k) for i, j, k in
            [(0, 1, 0), (0, 2, 0), (1, 0, 0), (1, 2, 0), (2, 0, 0), (2, 0, 1), (2, 1, 0)]] == list(range(7))


def test_paddle_round_trip_is_exact(w18_ssld, image, tmp_path):
    path = tmp_path / "HRNet_W18_C_ssld_pretrained.pdparams"
    save_pdparams(to_paddle(w18_ssld.state_dict()), path)
    fresh = create_model("HRNet_W18_C_ssld")
    assert load_checkpoint(fresh, path).format == "paddle (legendary)"
    torch.testing.assert_close(logits(fresh, image), logits(w18_ssld, image), rtol=0, atol=0)


@pytest.mark.parametrize("spelling,protocol", [("legendary", 2), ("model_zoo", 4), ("legendary_v1", 5)])
def test_paddle_spellings_and_pickle_protocols(small_no_bias, image, tmp_path, spelling, protocol):
    path = tmp_path / "hrnet.pdparams"
    save_pdparams(to_paddle(small_no_bias.state_dict(), spelling), path, protocol)
    fresh = HighResolutionNet(CONFIGS["hrnet_w18_small"], num_classes=10, head_conv_bias=False)
    assert load_checkpoint(fresh, path).format == f"paddle ({spelling})"
    torch.testing.assert_close(logits(fresh, image), logits(small_no_bias, image), rtol=0, atol=0)


def test_paddle_into_model_with_head_conv_bias(small, image):
    fresh = create_model("hrnet_w18_small")
    load_checkpoint(fresh, to_paddle(small.state_dict()))
    got = fresh.state_dict()
    assert got["downsamp_modules.1.0.bias"].abs().max() == 0
    assert got["stage2.0.branches.0.0.bn1.num_batches_tracked"] == 0
    torch.testing.assert_close(logits(fresh, image), logits(small, image))


# ------------------------------------------------------------------------------------------------ features


@pytest.mark.parametrize("location", ["incre", ""])
@pytest.mark.parametrize("export", ["timm", "mmpretrain", "paddle"])
def test_features_only_ignores_head_of_classification_checkpoint(small, export, location):
    sd = small.state_dict()
    ckpt = {"timm": sd, "mmpretrain": to_mmpretrain(sd), "paddle": to_paddle(sd)}[export]
    features = create_model("hrnet_w18_small", features_only=True, feature_location=location)
    report = load_checkpoint(features, ckpt)
    head = {"timm": ("downsamp_modules.", "final_layer.", "classifier."),
            "mmpretrain": ("neck.0.downsample_layers.", "neck.0.final_layer.", "head.fc."),
            "paddle": ("cls_head_conv_list.", "conv_last.", "fc.")}[export]
    incre = {"timm": "incre_modules.", "mmpretrain": "neck.0.increase_layers.", "paddle": "last_cls."}[export]
    assert report.ignored_keys and all(k.startswith(head + (incre,)) for k in report.ignored_keys)
    assert any(k.startswith(incre) for k in report.ignored_keys) == (location == "")
    for key, value in features.state_dict().items():
        if not (export == "paddle" and key.endswith("num_batches_tracked")):  # PaddleClas has no such counter
            torch.testing.assert_close(value, sd[key], rtol=0, atol=0, msg=key)


# ------------------------------------------------------------------------------------------------ errors


@pytest.fixture(scope="module")
def w32_state():
    with torch.device("meta"):
        model = create_model("hrnet_w32")
    return {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("export", [lambda sd: sd, to_mmpretrain, to_paddle], ids=["timm", "mmpretrain", "paddle"])
def test_checkpoint_of_another_variant_says_which(w32_state, export):
    with pytest.raises(CheckpointError, match=r"(?s)shape mismatch.*looks like a checkpoint of hrnet_w32\b"):
        load_checkpoint(create_model("hrnet_w18"), export(w32_state))


def test_ssld_checkpoint_into_plain_variant(w18_ssld):
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(create_model("hrnet_w18"), w18_ssld.state_dict())
    msg = str(err.value)
    assert "missing from the checkpoint (4): downsamp_modules.0.0.bias" in msg and "final_layer.0.bias" in msg
    assert "hrnet_w18_ssld" in msg


def test_missing_unexpected_and_misshaped_keys_in_one_error(small):
    sd = dict(small.state_dict())
    del sd["stage3.0.branches.1.0.conv1.weight"]
    sd["extra.weight"] = torch.zeros(3)
    sd["conv1.weight"] = torch.zeros(64, 3, 5, 5)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(create_model("hrnet_w18_small"), sd)
    msg = str(err.value)
    assert "missing from the checkpoint (1): stage3.0.branches.1.0.conv1.weight" in msg
    assert "unexpected in the checkpoint (1): extra.weight" in msg
    assert "conv1.weight: checkpoint [64, 3, 5, 5], model [64, 3, 3, 3]" in msg


def test_long_key_lists_are_grouped_and_truncated(small):
    sd = {k: v for k, v in small.state_dict().items() if not k.startswith("stage")}
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(create_model("hrnet_w18_small"), sd)
    msg = str(err.value)
    missing = sum(k.startswith("stage") for k in small.state_dict())
    assert f"missing from the checkpoint ({missing})" in msg
    assert "stage2.#.branches.#.#.conv1.weight (4 keys, e.g. stage2.0.branches.0.0.conv1.weight)" in msg
    assert "more groups" in msg and len(msg) < 3000


def test_num_classes_mismatch_hint(small):
    with pytest.raises(CheckpointError, match="(?s)classifier.weight.*num_classes"):
        load_checkpoint(create_model("hrnet_w18_small", num_classes=10), small.state_dict())


def test_non_strict_loads_what_fits(small):
    sd = dict(small.state_dict())
    del sd["classifier.weight"]
    sd["extra.bias"] = torch.zeros(1)
    fresh = create_model("hrnet_w18_small")
    report = load_checkpoint(fresh, sd, strict=False)
    assert report.missing_keys == ["classifier.weight"] and report.unexpected_keys == ["extra.bias"]
    for key, value in fresh.state_dict().items():
        if key != "classifier.weight":
            torch.testing.assert_close(value, sd[key], rtol=0, atol=0, msg=key)


def test_identify_variant():
    assert identify_variant(create_model("hrnet_w18_small_v2", num_classes=5).state_dict()) == ["hrnet_w18_small_v2"]
    w18 = create_model("hrnet_w18").state_dict()
    assert identify_variant(w18) == ["hrnet_w18"]
    # mmpretrain and PaddleClas store no head-conv bias: the ssld layout fits as well.
    assert identify_variant(to_paddle(w18)) == ["hrnet_w18", "hrnet_w18_ssld"]
    assert identify_variant({"conv1.weight": torch.zeros(1)}) == []
    assert detect_format(to_mmpretrain(w18)).name == "mmpretrain"


@pytest.mark.parametrize("suffix", [".pth", ".pdparams"])
def test_truncated_file(small, tmp_path, suffix):
    full = tmp_path / f"full{suffix}"
    if suffix == ".pth":
        torch.save(small.state_dict(), full)
    else:
        save_pdparams(to_paddle(small.state_dict()), full)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated|cannot be read"):
        load_checkpoint(create_model("hrnet_w18_small"), cut)


def test_unreadable_paths(tmp_path):
    model = create_model("hrnet_w18_small")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(model, tmp_path / "absent.pth")
    with pytest.raises(CheckpointError, match="not a file"):
        load_checkpoint(model, tmp_path)
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(model, tmp_path / "empty.pth")
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="neither a PyTorch checkpoint nor"):
        load_checkpoint(model, tmp_path / "notes.pth")


class _RunsCode:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pdparams_that_would_run_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pdparams"
    with open(path, "wb") as f:
        pickle.dump({"conv_layer1_1.conv.weight": _RunsCode()}, f)
    with pytest.raises(CheckpointError, match="refusing to load builtins.print"):
        load_checkpoint(create_model("hrnet_w18_small"), path)
    assert "must never run" not in capsys.readouterr().out


def test_torch_file_with_python_objects_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "hook": _RunsCode()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(create_model("hrnet_w18_small"), path)
    assert "must never run" not in capsys.readouterr().out


def test_non_tensor_entry():
    with pytest.raises(CheckpointError, match="'conv1.weight' is a str, not a tensor"):
        load_checkpoint(create_model("hrnet_w18_small"), {"conv1.weight": "oops"})


# -- loading into the wrong object ----------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["wrapper", "inplace"])
def test_converted_model_is_refused_naming_the_order(small, how):
    import copy
    import hrnet_fast
    target = copy.deepcopy(small)
    fast = hrnet_fast.convert(target, inplace=how == "inplace")
    with pytest.raises(CheckpointError, match=r"load the checkpoint before convert\(\)"):
        load_checkpoint(fast if how == "wrapper" else target, small.state_dict())


def test_resnet_state_dict_is_not_called_timm_format():
    timm = pytest.importorskip("timm")
    resnet = timm.create_model("resnet18").state_dict()
    assert detect_format(resnet).name == "unknown"
    with pytest.raises(CheckpointError, match="not HRNet's in any format") as err:
        load_checkpoint(create_model("hrnet_w18_small"), resnet)
    assert "timm format" not in str(err.value)
    assert load_checkpoint(create_model("hrnet_w18_small"), resnet, strict=False).format == "unknown"


def test_timm_checkpoint_still_detected_as_timm(small):
    assert detect_format(small.state_dict()).name == "timm"
    features = {k: v for k, v in small.state_dict().items() if k.startswith(("conv", "bn", "layer1", "transition1"))}
    assert detect_format(features).name == "timm"


def test_mismatch_error_keeps_details_apart_from_api_advice(small):
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(create_model("hrnet_w18_small", num_classes=10), small.state_dict())
    e = err.value
    assert e.num_classes == 1000 and "classifier.weight" in e.details
    assert "strict=False" not in e.details and "strict=False" in str(e)
