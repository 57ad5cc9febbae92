"""Params / MACs / FLOPs against the seed tables (typed here from /work seeds, not taken from hrnet_fast), hand-counted
small models, and the ``hrnet-fast profile`` command."""
import argparse
import json

import pytest
import torch
import torch.nn as nn

from hrnet_fast import create_model
# By name from the module: the package may export the function ``profile`` under the module's name.
from hrnet_fast.profile import add_arguments, main, profile

# MMClassification 0.x HRNet page: Params(M), Flops(G) at 224x224.
MMCLS = {"hrnet_w18": (21.30, 4.33), "hrnet_w30": (37.71, 8.17), "hrnet_w32": (41.23, 8.99),
         "hrnet_w40": (57.55, 12.77), "hrnet_w44": (67.06, 14.96), "hrnet_w48": (77.47, 17.36),
         "hrnet_w64": (128.06, 29.00), "hrnet_w18_ssld": (21.30, 4.33), "hrnet_w48_ssld": (77.47, 17.36)}
# PaddleClas HRNet page: Parameters (M) (its models have the ssld layout, bias-free head convs).
PADDLE_PARAMS = {"hrnet_w18": 21.290, "hrnet_w30": 37.710, "hrnet_w32": 41.230, "hrnet_w40": 57.550,
                 "hrnet_w44": 67.060, "hrnet_w48": 77.470, "hrnet_w64": 128.060}


@pytest.fixture(scope="module")
def profiles():
    return {name: profile(name) for name in MMCLS}


@pytest.mark.parametrize("name", list(MMCLS))
def test_params_and_flops_match_the_seed_tables(profiles, name):
    p = profiles[name]
    params_m, flops_g = MMCLS[name]
    assert abs(p.params / 1e6 - params_m) <= 0.01
    if name in PADDLE_PARAMS:
        assert abs(p.params / 1e6 - PADDLE_PARAMS[name]) <= 0.01
    assert abs(p.flops / 1e9 / flops_g - 1) <= 0.002, f"{p.flops / 1e9:.4f} G vs MMCls {flops_g} G"


def test_known_figures(profiles):
    # Seed notes: conv + linear MACs of W18 at 224x224 are 4.284 G; the ssld heads have no conv bias (21.295 M).
    assert round(profiles["hrnet_w18"].macs / 1e9, 3) == 4.284
    assert round(profiles["hrnet_w18_ssld"].params / 1e6, 3) == 21.295
    # Bias-free head convs: same MACs, fewer FLOPs (one per output element of the four head convs).
    assert profiles["hrnet_w18_ssld"].macs == profiles["hrnet_w18"].macs
    head_outputs = 256 * 28 * 28 + 512 * 14 * 14 + 1024 * 7 * 7 + 2048 * 7 * 7
    assert profiles["hrnet_w18"].flops - profiles["hrnet_w18_ssld"].flops == head_outputs


def test_hand_counted_layers():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 4, 1, stride=2, bias=False), nn.Upsample(scale_factor=2),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    p = profile(model, (8, 8))
    conv1 = 64 * 8 * 3 * 9          # 64 pixels x 8 channels x (3 x 3 x 3) MACs
    conv2 = 16 * 4 * 8              # 4x4 output x 4 channels x 8 MACs
    linear = 4 * 10
    assert p.macs == conv1 + conv2 + linear
    assert p.flops_by_layer == {"conv": conv1 + 512 + conv2, "bn": 2 * 512, "relu": 512, "upsample": 256,
                                "pool": 256, "linear": linear + 10}
    assert p.flops == sum(p.flops_by_layer.values())
    assert p.params == sum(t.numel() for t in model.parameters())


def test_conv_macs_scale_with_pixels():
    small, large = profile("hrnet_w18_small", (224, 224)), profile("hrnet_w18_small", (448, 448))
    linear = 2048 * 1000
    assert large.macs - linear == 4 * (small.macs - linear)


def test_profile_leaves_the_model_alone():
    torch.manual_seed(0)
    model = create_model("hrnet_w18_small", num_classes=10).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    p = profile(model, (256, 192))
    assert p.input_size == (256, 192) and p.params == sum(t.numel() for t in model.parameters())
    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    for k, v in before.items():
        assert after[k].device.type == "cpu"
        torch.testing.assert_close(after[k], v, rtol=0, atol=0, msg=k)


def test_profile_errors():
    with pytest.raises(ValueError, match="cannot take a 230x230 input"):
        profile("hrnet_w18_small", (230, 230))
    with pytest.raises(ValueError, match="input_size must be"):
        profile("hrnet_w18_small", (224,))
    with pytest.raises(ValueError, match="unknown model name"):
        profile("hrnet_w99")
    with pytest.raises(TypeError, match="GELU"):
        profile(nn.Sequential(nn.Conv2d(3, 4, 1), nn.GELU()), (8, 8))


def run_cli(argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return main(parser.parse_args(argv))


def test_cli_table_and_json(tmp_path, capsys):
    out_json = tmp_path / "profile.json"
    assert run_cli(["--models", "hrnet_w18,HRNet-W48 (ssld)", "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    rows = [line for line in text.splitlines() if line.startswith("| hrnet_")]
    assert [r.split("|")[1].strip() for r in rows] == ["hrnet_w18", "hrnet_w48_ssld"]
    w18 = [c.strip() for c in rows[0].split("|")[1:-1]]
    # model, params, MMCls params, Paddle params, MACs, FLOPs, MMCls FLOPs, diff, 2xMACs, Paddle FLOPS, diff
    assert w18[:8] == ["hrnet_w18", "21.299", "21.30", "21.290", "4.284", "4.333", "4.33", "+0.07 %"]
    assert w18[9] == "4.14"
    data = json.loads(out_json.read_text())
    assert data["input_size"] == [224, 224]
    assert [r["model"] for r in data["rows"]] == ["hrnet_w18", "hrnet_w48_ssld"]
    assert abs(data["rows"][1]["params_m"] - 77.466) < 1e-3


def test_cli_other_input_size_has_no_seed_columns(capsys):
    assert run_cli(["--models", "hrnet_w18_small", "--input-size", "256x192"]) == 0
    text = capsys.readouterr().out
    assert "Input 256x192" in text and "224x224" in text
    row = next(line for line in text.splitlines() if line.startswith("| hrnet_w18_small"))
    assert row.count("| - ") == 6


def test_cli_errors(capsys):
    assert run_cli(["--models", "hrnet_w99"]) == 2
    assert "unknown model name 'hrnet_w99'" in capsys.readouterr().err
    assert run_cli(["--models", "hrnet_w18_small", "--input-size", "230"]) == 2
    assert "cannot take a 230x230 input" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli(["--input-size", "big"])
    assert "input size must be N or HxW" in capsys.readouterr().err


# Published: the pose paper's COCO table (params M, GFLOPs) and the segmentation paper's W48 at 1024x2048.
POSE_PAPER = [("pose_hrnet_w32", (256, 192), 28.5, 7.1), ("pose_hrnet_w48", (256, 192), 63.6, 14.6),
              ("pose_hrnet_w32", (384, 288), 28.5, 16.0), ("pose_hrnet_w48", (384, 288), 63.6, 32.9)]


@pytest.mark.parametrize("name,size,params_m,gflops", POSE_PAPER, ids=lambda v: str(v))
def test_pose_paper_gflops_are_conv_macs_over_2_to_the_30(name, size, params_m, gflops):
    p = profile(name, size)
    assert round(p.params / 1e6, 1) == params_m
    assert round(p.macs / 2 ** 30, 1) == gflops          # the official summary tool divides by 1024**3
    assert 1.07 < (p.macs / 1e9) / gflops < 1.08         # hence 7.4 % below the decimal count


def test_segmentation_paper_figures():
    p = profile("seg_hrnetv2_w48", (1024, 2048))
    assert round(p.params / 1e6, 1) == 65.9 and 747 <= p.macs / 1e9 < 748  # 747.51 G; the paper prints 747
    assert p.flops_by_layer["upsample"] > 0  # bilinear resizes are counted like mmcv's upsample (1 per output)


def test_cli_task_models_at_their_input_sizes(capsys):
    assert run_cli(["--models", "pose_hrnet_w32,seg_hrnetv2_w48"]) == 0
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in capsys.readouterr().out.splitlines()
            if line.startswith(("| pose_", "| seg_"))]
    assert [(r[0], r[1]) for r in rows] == [("pose_hrnet_w32", "256x192"), ("pose_hrnet_w32", "384x288"),
                                            ("seg_hrnetv2_w48", "512x1024"), ("seg_hrnetv2_w48", "1024x2048")]
    assert rows[0][2:8] == ["28.536", "28.5", "7.65", "7.12", "7.1", "conv MACs / 2**30"]
    assert rows[3][3] == "65.9" and rows[3][6] == "747.0"
