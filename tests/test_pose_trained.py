"""The fused pose pipeline against the reference pipeline on a trained pose HRNet (``tiny_pose``): peaked heatmaps,
as a trained network gives, where both decoders must agree on every joint (keypoints within 0.01 px, no mask) and
the argmax must be the same everywhere."""
import pytest
import torch

import hrnet_fast
from hrnet_fast.convert import ConvertedModel
from hrnet_fast.pose import box_to_center_scale, flip_back
from hrnet_fast.pose.decode import argmax
import tiny_pose
from tiny_pose import INPUT, MARGIN, MEAN, STD

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = (200, 300)   # image height, width
BLOB_SIGMA = 3.0    # image pixels; crops at 0.85..1.05 image pixels per crop pixel: 2.9..3.5 crop pixels
# Per person: crop center (x, y), image pixels per crop pixel, and the box's width and height as fractions of the
# box that has the input's aspect ratio (one of them is 1; box_to_center_scale grows the other back). The crops do
# not overlap; the four corner people's crops reach past the image's edge.
PEOPLE = ((22., 35., 1.0, 0.8, 1.0), (150., 45., 0.85, 1.0, 1.0), (280., 30., 0.95, 1.0, 0.7),
          (30., 160., 1.05, 1.0, 1.0), (150., 150., 0.9, 0.9, 1.0), (275., 172., 1.0, 1.0, 0.85))


@pytest.fixture(scope="module")
def trained():
    return tiny_pose.trained_tiny_pose()


def scene(seed=0):
    """(uint8 image [200, 300, 3], boxes [6, 4] xyxy, joints [6, 3, 2]): six people of three coloured blobs, each
    joint at least ``MARGIN`` crop pixels inside its person's crop (as in training) and 8 pixels inside the image."""
    gen = torch.Generator().manual_seed(seed)
    h, w = INPUT
    boxes, joints = [], []
    for cx, cy, s, fw, fh in PEOPLE:
        bw, bh = w * s / 1.25, h * s / 1.25   # the box whose padded crop is w x h crop pixels of s image pixels
        boxes.append([cx - fw * bw / 2, cy - fh * bh / 2, cx + fw * bw / 2, cy + fh * bh / 2])
        lo = torch.tensor([max(cx + (MARGIN - w / 2) * s, 8.), max(cy + (MARGIN - h / 2) * s, 8.)])
        hi = torch.tensor([min(cx + (w / 2 - MARGIN) * s, SIZE[1] - 9.), min(cy + (h / 2 - MARGIN) * s, SIZE[0] - 9.)])
        joints.append(lo + (hi - lo) * torch.rand(3, 2, generator=gen, dtype=torch.float64))
    joints = torch.stack(joints).to(torch.float32)
    noise = 20 * torch.rand(*SIZE, 3, generator=gen)
    image = tiny_pose.draw(joints, torch.full((len(PEOPLE),), BLOB_SIGMA), SIZE, noise)
    return image, torch.tensor(boxes), joints


def test_scene_is_in_the_training_distribution():
    image, boxes, joints = scene()
    h, w = INPUT
    centers, scales = box_to_center_scale(boxes, w / h, 1.25)
    expected = torch.tensor([[cx, cy, w * s, h * s] for cx, cy, s, _, _ in PEOPLE])
    torch.testing.assert_close(torch.cat((centers, scales), 1), expected)
    crop = (joints - centers[:, None]) / (scales[:, None] / torch.tensor([w, h])) + torch.tensor([w / 2, h / 2])
    assert (crop >= MARGIN - 1e-3).all() and (crop <= torch.tensor([w, h]) - MARGIN + 1e-3).all()
    assert (boxes[:, :2] < 0).any() and (boxes[:, 2] > SIZE[1]).any() and (boxes[:, 3] > SIZE[0]).any()
    assert image.dtype == torch.uint8 and image.shape == (*SIZE, 3)


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("method", ["classic", "dark"])
def test_fused_pipeline_equals_the_reference_on_a_trained_hrnet(trained, method, shift):
    image, boxes, joints = scene()
    # No left/right joints: each joint is its own mirror image (a blob's colour does not change in a mirror).
    options = dict(input_size=INPUT, decode=method, flip_pairs=(), mean=MEAN, std=STD, shift_heatmap=shift)
    ref = hrnet_fast.TopDownPose(trained, fused=False, **options)
    fused = hrnet_fast.TopDownPose(trained, **options)
    assert isinstance(fused.model, ConvertedModel) and not fused.model.training
    K = len(boxes)
    with torch.no_grad():
        hm_ref = ref.forward(ref.preprocess([image], [boxes]).crops)
        hm_fused = fused.forward(fused.preprocess([image], [boxes]).crops)
    merged_ref = flip_back(hm_ref[:K], hm_ref[K:], ref.flip_index, shift=shift)
    merged_fused = flip_back(hm_fused[:K], hm_fused[K:], ref.flip_index, shift=shift)

    # A trained network: one clear peak per map, well above everything a few pixels away from it.
    x_r, y_r, peak = argmax(merged_ref)
    hh, hw = merged_ref.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(hh), torch.arange(hw), indexing="ij")
    far = ((xs - x_r[..., None, None]) ** 2 + (ys - y_r[..., None, None]) ** 2) > 4 ** 2
    assert peak.min() > 0.5 and (merged_ref.abs() * far).amax() < 0.2 * peak.min()

    # The same argmax everywhere, no joint excused as a tie: no map has a near-tie as test_pose_fused defines it
    # (a runner-up within twice the two networks' largest difference of the peak).
    x_f, y_f, _ = argmax(merged_fused)
    assert torch.equal(x_r, x_f) and torch.equal(y_r, y_f)
    top2 = merged_ref.flatten(2).topk(2, dim=-1).values
    assert ((top2[..., 0] - top2[..., 1]) > 2 * (merged_fused - merged_ref).abs().amax(dim=(2, 3))).all()

    k_ref, s_ref = ref(image, boxes)
    k_fused, s_fused = fused(image, boxes)
    assert k_ref.shape == (K, 3, 2) and s_ref.shape == (K, 3)
    torch.testing.assert_close(k_fused, k_ref, atol=0.01, rtol=0)      # every joint
    torch.testing.assert_close(s_fused, s_ref, atol=1e-4, rtol=1e-4)

    # And the reference finds the drawn joints (a heatmap pixel is 4 crop pixels, 3.4..4.2 image pixels). With the
    # official shift the flip test's merged peak is 1/8 heatmap pixel off; without it 3/8 (docs/pose.md).
    if not shift:
        return
    error = (k_ref - joints).norm(dim=-1)
    assert (error < {"classic": 2.5, "dark": 1.5}[method]).float().mean() >= 0.8 and error.max() < 3.0
