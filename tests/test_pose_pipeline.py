"""TopDownPose's reference pipeline (fused=False) end to end: boxes -> crops -> network -> flip test -> decoding ->
image pixels, checked on a stand-in model whose keypoints can be worked out by hand (``pose_models.Sampler``), on
the model layouts the library takes, and on bad input."""
import pytest
import torch

import hrnet_fast
from hrnet_fast.models import PoseHighResolutionNet
from hrnet_fast.registry import CONFIGS
from official_hrnet import OfficialHRNet, extra
from pose_models import MMPoseLayout, Sampler, blob_image

pytestmark = pytest.mark.usefixtures("one_thread")

X0, Y0 = 53.3, 41.7
# Center (50, 45), 48x64; padding 2 makes the crop 96x128 image pixels for a 128x96 input: one pixel per pixel, so
# the 32x24 heatmap has 4 image pixels a cell and the blob sits at heatmap (12 + 3.3 / 4, 16 - 3.3 / 4).
BOX = torch.tensor([[26., 13., 74., 77.]])
HM_X, HM_Y = 12 + (X0 - 50) / 4, 16 + (Y0 - 45) / 4


def sampler_pose(**kwargs):
    options = dict(input_size=(128, 96), padding=2.0, mean=(0, 0, 0), std=(1, 1, 1), flip_test=False, fused=False)
    options.update(kwargs)
    return hrnet_fast.TopDownPose(Sampler(), **options)


def image_x(hm_x):
    return 50 + (hm_x - 12) * 4


def image_y(hm_y):
    return 45 + (hm_y - 16) * 4


def test_classic_keypoint_by_hand():
    keypoints, scores = sampler_pose()(blob_image(X0, Y0), BOX)
    assert keypoints.shape == (1, 17, 2) and scores.shape == (1, 17) and keypoints.dtype == torch.float32
    # argmax 13 (12.825 rounded), a quarter toward 12; argmax 15 (15.175), a quarter toward 16.
    assert keypoints[0, 0].tolist() == [image_x(12.75), image_y(15.25)]
    torch.testing.assert_close(keypoints, keypoints[:, :1].expand(1, 17, 2))   # 17 copies of one heatmap


def test_dark_keypoint_lands_on_the_blob():
    keypoints, _ = sampler_pose(decode="dark")(blob_image(X0, Y0), BOX)
    torch.testing.assert_close(keypoints[0, 0], torch.tensor([X0, Y0]), atol=0.05, rtol=0)


@pytest.mark.parametrize("shift,offset", [(False, -0.375), (True, 0.125)])
def test_flip_test_and_its_one_pixel_shift(shift, offset):
    # The mirrored crop's heatmap column i samples crop column 95 - 4i: flipped back, column i holds what sits at
    # heatmap x = i + 0.75 (the flip misalignment); the official shift moves it to i - 0.25. The average of the two
    # Gaussians peaks halfway: x - 0.375 without the shift, x + 0.125 with it.
    keypoints, _ = sampler_pose(decode="dark", flip_test=True, shift_heatmap=shift)(blob_image(X0, Y0), BOX)
    torch.testing.assert_close(keypoints[0, 0], torch.tensor([X0 + 4 * offset, Y0]), atol=0.05, rtol=0)
    keypoints, _ = sampler_pose(flip_test=True, shift_heatmap=shift)(blob_image(X0, Y0), BOX)
    # Classic: argmax of the merged peak at 12.45 (12, a quarter up) or 12.95 (13, a quarter down).
    assert keypoints[0, 0].tolist() == [image_x(12.25 if not shift else 12.75), image_y(15.25)]


def test_mirrored_crops_follow_in_the_same_batch():
    pose = sampler_pose(flip_test=True)
    batch = pose.preprocess([blob_image(X0, Y0)], [torch.cat((BOX, BOX + 7))])
    assert batch.crops.shape == (4, 3, 128, 96) and batch.counts == [2]
    torch.testing.assert_close(batch.crops[2:], batch.crops[:2].flip(-1))


def test_several_images_run_as_one_batch():
    pose = sampler_pose(decode="dark", flip_test=True)
    images = [blob_image(X0, Y0), blob_image(30.0, 60.0)]
    boxes = [torch.cat((BOX, BOX - 3)), torch.tensor([[10., 30., 50., 90.]]), ]
    keypoints, scores = pose(images, boxes)
    assert [k.shape[0] for k in keypoints] == [2, 1]
    for image, box, k, s in zip(images, boxes, keypoints, scores):
        alone_k, alone_s = pose(image, box)
        torch.testing.assert_close(k, alone_k)
        torch.testing.assert_close(s, alone_s)


def test_numpy_images_and_boxes():
    pose = sampler_pose()
    expected = pose(blob_image(X0, Y0), BOX)
    got = pose(blob_image(X0, Y0).numpy(), BOX.numpy())
    torch.testing.assert_close(got, expected)


def test_no_boxes_gives_empty_tensors():
    pose = sampler_pose(flip_test=True)
    keypoints, scores = pose(blob_image(X0, Y0), torch.zeros(0, 4))
    assert keypoints.shape == (0, 17, 2) and scores.shape == (0, 17)
    keypoints, scores = pose([blob_image(X0, Y0)] * 2, [torch.zeros(0, 4), BOX])
    assert keypoints[0].shape == (0, 17, 2) and keypoints[1].shape == (1, 17, 2)


@pytest.mark.parametrize("image,boxes,error,message", [
    (blob_image(X0, Y0).float(), BOX, TypeError, "image must be uint8"),
    (torch.zeros(20, 20, 4, dtype=torch.uint8), BOX, ValueError, "HxWx3"),
    (torch.zeros(3, 20, 20, dtype=torch.uint8), BOX, ValueError, r"permute\(1, 2, 0\)"),
    (blob_image(X0, Y0), torch.tensor([[5., 5., 1., 9.]]), ValueError, "x2 < x1"),
    (blob_image(X0, Y0), torch.tensor([[5., float("nan"), 7., 9.]]), ValueError, "NaN or infinite"),
    (blob_image(X0, Y0), torch.tensor([[5., 5., float("inf"), 9.]]), ValueError, "NaN or infinite"),
    ([blob_image(X0, Y0)], BOX, TypeError, "list of box tensors"),
    ([blob_image(X0, Y0)], [BOX, BOX], ValueError, "1 images and 2 box tensors"),
])
def test_bad_input_is_named(image, boxes, error, message):
    with pytest.raises(error, match=message):
        sampler_pose()(image, boxes)


def test_a_classification_model_is_refused():
    with pytest.raises(TypeError, match="a classification model"):
        hrnet_fast.TopDownPose(hrnet_fast.create_model("hrnet_w18_small").eval(), fused=False)
    with pytest.raises(TypeError, match="no 1x1 heatmap conv"):
        hrnet_fast.TopDownPose(torch.nn.Conv2d(3, 17, 3).eval(), fused=False)


def test_joints_must_match_the_flip_pairs():
    with pytest.raises(ValueError, match="flip_pairs are for 17 joints but the model predicts 14"):
        hrnet_fast.TopDownPose(Sampler(14), fused=False)
    with pytest.raises(ValueError, match="joint 16"):
        hrnet_fast.TopDownPose(Sampler(14), flip_pairs=((1, 2), (12, 16)), fused=False)
    pose = hrnet_fast.TopDownPose(Sampler(14), flip_pairs=((1, 2), (12, 13)), fused=False)
    assert pose.flip_index.tolist() == [0, 2, 1] + list(range(3, 12)) + [13, 12]


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="decode must be one of classic, dark"):
        hrnet_fast.TopDownPose(Sampler(), decode="soft-argmax", fused=False)
    with pytest.raises(ValueError, match="cannot take a 100x75 input"):
        hrnet_fast.TopDownPose(Sampler(), input_size=(100, 75), fused=False)
    with pytest.raises(RuntimeError, match="model.eval()"):
        hrnet_fast.TopDownPose(Sampler().train(), fused=False)


def calibrated(model):
    torch.manual_seed(0)
    return hrnet_fast.calibrate_bn(model, (64, 64), steps=1, batch=2)


@pytest.mark.parametrize("layout", ["ours", "official", "mmpose", "mmpose0"])
def test_every_pose_layout_runs(layout):
    if layout == "ours":
        model = PoseHighResolutionNet(CONFIGS["hrnet_w18_small"])
    elif layout == "official":
        model = OfficialHRNet(extra(18, "v1"), "pose", 17)
    else:
        model = MMPoseLayout(PoseHighResolutionNet(CONFIGS["hrnet_w18_small"]),
                             head="head" if layout == "mmpose" else "keypoint_head")
    model = calibrated(model)
    image = torch.randint(0, 256, (90, 70, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[5., 5., 40., 60.], [20., 10., 69., 89.], [-20., -20., 30., 40.]])
    centers, scales = hrnet_fast.pose.box_to_center_scale(boxes, 1.0, 1.25)
    keypoints, scores = hrnet_fast.TopDownPose(model, input_size=(64, 64), fused=False)(image, boxes)
    assert keypoints.shape == (3, 17, 2) and scores.shape == (3, 17)
    # Classic keypoints lie in their crop (the padded, aspect-fixed box), a quarter heatmap pixel at most past it.
    assert torch.all((keypoints - centers[:, None]).abs() <= scales[:, None] / 2 + 1e-3)
    # The network saw the reference crops, mirrored ones after them: its heatmaps decode to the pipeline's output.
    pose = hrnet_fast.TopDownPose(model, input_size=(64, 64), decode="dark", fused=False)
    keypoints, scores = pose(image, boxes)
    batch = pose.preprocess([image], [boxes])
    with torch.no_grad():
        heatmaps = model(batch.crops)
    expected = hrnet_fast.pose.decode(heatmaps[:3], centers, scales, "dark", flipped=heatmaps[3:],
                                      flip_index=pose.flip_index)
    torch.testing.assert_close((keypoints, scores), expected)
