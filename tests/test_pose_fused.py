"""The fused pose pipeline (converted model, ``crop_normalize``, ``heatmap_decode``) against the reference pipeline,
and the fused ops' own references against the pipeline-level references (the same definitions, written twice)."""
import pytest
import torch

import hrnet_fast
from hrnet_fast.convert import ConvertedModel
from hrnet_fast.convert.cuda_graph import batch_bucket
from hrnet_fast.models import PoseHighResolutionNet
from hrnet_fast.pose import crop_reference, crop_theta, decode, flip_back, flip_index, ops
from hrnet_fast.pose.decode import argmax
from hrnet_fast.registry import CONFIGS
from pose_models import Sampler, blob_image

pytestmark = pytest.mark.usefixtures("one_thread")
GEN = torch.Generator().manual_seed(0)


def random_thetas(k, h, w):
    centers = torch.rand(k, 2, generator=GEN) * torch.tensor([w, h]) * 1.4 - torch.tensor([0.2 * w, 0.2 * h])
    scales = torch.rand(k, 2, generator=GEN) * torch.tensor([w, h]) + 1
    return torch.cat((crop_theta(centers, scales, (16, 12)), crop_theta(centers, scales, (16, 12), flip=True)))


@pytest.mark.parametrize("k", [0, 1, 5])
def test_crop_op_reference_is_the_pipeline_crop(k):
    image = torch.randint(0, 256, (23, 31, 3), dtype=torch.uint8, generator=GEN)
    theta = random_thetas(k, 23, 31)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ours = crop_reference(image, theta, 16, 12, mean, std)
    torch.testing.assert_close(ops.crop_normalize_reference(image, theta, 16, 12, mean, std), ours)
    torch.testing.assert_close(ops.crop_normalize(image, theta, 16, 12, mean, std), ours)


def peaked_heatmaps(k, j, h=32, w=24):
    """Heatmaps shaped like a trained model's: a Gaussian (sigma 2) per joint at a random sub-pixel point, a weaker
    second one, and noise."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    out = torch.zeros(k, j, h, w)
    for amp in (1.0, 0.4):
        cx = torch.rand(k, j, 1, 1, generator=GEN) * (w - 8) + 4
        cy = torch.rand(k, j, 1, 1, generator=GEN) * (h - 8) + 4
        out += amp * torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / 8)
    return out + 0.02 * torch.randn(k, j, h, w, generator=GEN)


@pytest.mark.parametrize("method", ["classic", "dark"])
@pytest.mark.parametrize("shift", [False, True])
def test_decode_op_reference_is_the_pipeline_decode(method, shift):
    hm, flipped = peaked_heatmaps(6, 17), peaked_heatmaps(6, 17)
    centers = torch.rand(6, 2, generator=GEN) * 500
    scales = torch.rand(6, 2, generator=GEN) * 300 + 10
    index = flip_index(hrnet_fast.pose.COCO_FLIP_PAIRS, 17)
    keypoints, scores = decode(hm, centers, scales, method, flipped=flipped, flip_index=index, shift_flipped=shift)
    for fn in (ops.heatmap_decode_reference, ops.heatmap_decode):
        out = fn(hm, centers, scales, method, flipped=flipped, flip_index=index, shift_flipped=shift)
        torch.testing.assert_close(out[..., :2], keypoints, atol=1e-3, rtol=0)
        torch.testing.assert_close(out[..., 2], scores)


def blob_scene(people=8):
    """An image of ``people`` blobs with a box around each (a few reaching past the image's edge)."""
    points = [(20.5 + 37.3 * i, 30.2 + 11.9 * (i % 4)) for i in range(people)]
    image = torch.zeros(120, 320, 3, dtype=torch.uint8)
    for x, y in points:
        image = torch.maximum(image, blob_image(x, y, 120, 320, sigma=6.0))
    boxes = torch.tensor([[x - 18 - (i % 3), y - 25 + (i % 2), x + 16, y + 30] for i, (x, y) in enumerate(points)])
    return image, boxes, torch.tensor(points)


@pytest.mark.parametrize("method", ["classic", "dark"])
def test_fused_pipeline_equals_the_reference_on_blobs(method):
    image, boxes, points = blob_scene()
    options = dict(input_size=(128, 96), decode=method, mean=(0, 0, 0), std=(1, 1, 1), shift_heatmap=True)
    reference = hrnet_fast.TopDownPose(Sampler(), fused=False, **options)(image, boxes)
    fused = hrnet_fast.TopDownPose(Sampler(), **options)(image, boxes)
    torch.testing.assert_close(fused[0], reference[0], atol=0.01, rtol=0)
    torch.testing.assert_close(fused[1], reference[1])
    if method == "dark":  # and both find the blobs (the flip misalignment, shifted, is 1/8 heatmap pixel)
        assert (reference[0][:, 0] - points).abs().max() < 1.0


@pytest.fixture(scope="module")
def tiny_pose():
    torch.manual_seed(0)
    return hrnet_fast.calibrate_bn(PoseHighResolutionNet(CONFIGS["hrnet_w18_small"]), (64, 64), steps=2, batch=2)


def test_fused_pipeline_equals_the_reference_on_an_hrnet(tiny_pose):
    image = torch.randint(0, 256, (120, 100, 3), dtype=torch.uint8, generator=GEN)
    boxes = torch.tensor([[10., 10., 50., 90.], [0., 0., 100., 120.], [-20., -5., 60., 70.], [30., 40., 31., 41.]])
    ref = hrnet_fast.TopDownPose(tiny_pose, input_size=(64, 64), fused=False)
    fused = hrnet_fast.TopDownPose(tiny_pose, input_size=(64, 64))
    assert isinstance(fused.model, ConvertedModel) and not fused.model.training
    with torch.no_grad():
        hm_ref = ref.forward(ref.preprocess([image], [boxes]).crops)
        hm_fused = fused.forward(fused.preprocess([image], [boxes]).crops)
    merged_ref = flip_back(hm_ref[:4], hm_ref[4:], ref.flip_index)
    merged_fused = flip_back(hm_fused[:4], hm_fused[4:], ref.flip_index)
    x_r, y_r, _ = argmax(merged_ref)
    x_f, y_f, _ = argmax(merged_fused)
    # Same argmax everywhere but near-ties (the runner-up within the two networks' rounding difference).
    top2 = merged_ref.flatten(2).topk(2, dim=-1).values
    tie = (top2[..., 0] - top2[..., 1]) <= 2 * (merged_fused - merged_ref).abs().amax(dim=(2, 3))
    assert torch.all((x_r == x_f) & (y_r == y_f) | tie)
    k_ref, s_ref = ref(image, boxes)
    k_fused, s_fused = fused(image, boxes)
    same = ~tie[..., None].expand_as(k_ref)
    torch.testing.assert_close(k_fused[same], k_ref[same], atol=0.01, rtol=0)
    torch.testing.assert_close(s_fused, s_ref, atol=1e-4, rtol=1e-4)
    # Dark: where the Taylor step stays within a pixel of the argmax (a peak, not flat noise, around it).
    ref.method = fused.method = "dark"
    k_ref, _ = ref(image, boxes)
    k_fused, _ = fused(image, boxes)
    centers, scales = hrnet_fast.pose.box_to_center_scale(boxes, 1.0, 1.25)
    step = (k_ref - hrnet_fast.pose.to_image(torch.stack((x_r, y_r), -1).float(), centers, scales, (16, 16)))
    peaked = ((step.abs() / (scales[:, None] / 16)).amax(-1) < 1) & ~tie
    assert peaked.sum() >= 20, "too few peaked joints to compare"
    torch.testing.assert_close(k_fused[peaked], k_ref[peaked], atol=0.01, rtol=0)


def test_a_converted_model_is_used_as_given(tiny_pose):
    fast = hrnet_fast.convert(tiny_pose)
    pose = hrnet_fast.TopDownPose(fast, input_size=(64, 64))
    assert pose.model is fast
    keypoints, scores = pose([torch.zeros(30, 20, 3, dtype=torch.uint8)] * 2, [torch.zeros(0, 4)] * 2)
    assert [k.shape for k in keypoints] == [(0, 17, 2)] * 2 and [s.shape for s in scores] == [(0, 17)] * 2


def test_bfloat16_pipeline_follows_the_model(tiny_pose):
    pose = hrnet_fast.TopDownPose(hrnet_fast.convert(tiny_pose, dtype=torch.bfloat16), input_size=(64, 64))
    image = torch.randint(0, 256, (50, 40, 3), dtype=torch.uint8, generator=GEN)
    keypoints, scores = pose(image, torch.tensor([[5., 5., 30., 45.]]))
    assert pose.dtype == torch.bfloat16 and keypoints.dtype == torch.float32 and torch.isfinite(keypoints).all()
    assert pose.preprocess([image], [torch.tensor([[5., 5., 30., 45.]])]).crops.dtype == torch.bfloat16


def test_varying_people_reuse_bucketed_graphs(tiny_pose):
    # K people with the flip test are 2K crops; a converted HRNet keeps one CUDA graph per power-of-two batch.
    pose = hrnet_fast.TopDownPose(tiny_pose, input_size=(64, 64))
    assert pose.model.graphs.bucket_batches
    assert sorted({batch_bucket(2 * k) for k in (3, 4, 5, 7, 8)}) == [8, 16]


@pytest.mark.gpu
def test_varying_people_capture_one_graph_per_bucket_on_gpu(tiny_pose):
    pose = hrnet_fast.TopDownPose(hrnet_fast.convert(tiny_pose.cuda()), input_size=(64, 64))
    image = torch.randint(0, 256, (120, 100, 3), dtype=torch.uint8, generator=GEN).cuda()
    for k in (3, 4, 5, 7, 8):
        boxes = torch.tensor([[5. + i, 5., 60. + i, 90.] for i in range(k)], device="cuda")
        keypoints, _ = pose(image, boxes)
        assert keypoints.shape == (k, 17, 2) and keypoints.is_cuda
    assert len(pose.model.graphs) == 2          # batches 6, 8 -> 8; 10, 14, 16 -> 16: never recaptured per call
    tiny_pose.cpu()
