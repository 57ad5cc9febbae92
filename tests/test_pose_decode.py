"""The heatmap decoders (classic: official get_final_preds; dark: DarkPose's Taylor refinement), the flip-test merge
and the map back to image pixels, against hand-computed heatmaps."""
import pytest
import torch

from hrnet_fast.pose import decode, flip_back, flip_index
from hrnet_fast.pose.decode import classic, dark

# A 64x48 heatmap over a 192x256 crop centred on (100, 200): 4 image pixels per heatmap pixel, (24, 32) -> center.
CENTER, SCALE = torch.tensor([[100., 200.]]), torch.tensor([[192., 256.]])


def gaussian(x0, y0, h=64, w=48, sigma=2.0):
    """A [1, 1, h, w] heatmap: the unnormalised Gaussian COCO targets use (sigma 2 at 64x48), peak at (x0, y0)."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    return torch.exp(-((xs - x0) ** 2 + (ys - y0) ** 2) / (2 * sigma ** 2))[None, None]


def test_classic_steps_a_quarter_pixel_toward_the_higher_neighbour():
    hm = torch.zeros(1, 1, 16, 12)
    hm[0, 0, 7, 5] = 1.0
    hm[0, 0, 7, 6], hm[0, 0, 7, 4] = 0.5, 0.2    # right higher: +0.25 in x
    hm[0, 0, 6, 5], hm[0, 0, 8, 5] = 0.6, 0.3    # above higher: -0.25 in y
    coords, scores = classic(hm)
    assert coords.tolist() == [[[5.25, 6.75]]] and scores.tolist() == [[1.0]]


def test_classic_equal_neighbours_and_the_border_keep_the_argmax():
    hm = torch.zeros(2, 1, 16, 12)
    hm[0, 0, 7, 5], hm[0, 0, 7, 6], hm[0, 0, 7, 4] = 1.0, 0.5, 0.5
    hm[1, 0, 1, 10], hm[1, 0, 1, 11], hm[1, 0, 2, 10] = 1.0, 0.9, 0.9   # x = 10 < w - 1 but y = 1: no step at all
    coords, _ = classic(hm)
    assert coords.tolist() == [[[5.0, 7.0]], [[10.0, 1.0]]]


def test_classic_ties_take_the_first_maximum_in_row_major_order():
    hm = torch.zeros(1, 1, 16, 12)
    hm[0, 0, 9, 2] = hm[0, 0, 4, 8] = hm[0, 0, 4, 9] = 0.7
    coords, _ = classic(hm)
    assert coords.tolist() == [[[8.0 + 0.25, 4.0]]]   # (8, 4) first; its right neighbour is the other 0.7


def test_a_peak_at_or_below_zero_decodes_to_the_maps_origin():
    hm = torch.full((1, 2, 16, 12), -1.0)
    hm[0, 0, 5, 5] = -0.5
    hm[0, 1, 5, 5] = 0.0
    keypoints, scores = decode(hm, CENTER, SCALE)
    # Map (0, 0) -> image (100 - 6 * 16, 200 - 8 * 16), the 16x12 map being 16 pixels a cell here.
    assert keypoints.tolist() == [[[4.0, 72.0], [4.0, 72.0]]]
    assert scores.tolist() == [[-0.5, 0.0]]


@pytest.mark.parametrize("peak", [(20.3, 30.7), (10.55, 5.45), (30.9, 40.1), (24.0, 32.0), (38.6, 12.35)])
def test_dark_finds_a_sub_pixel_gaussian_peak(peak):
    coords, scores = dark(gaussian(*peak))
    assert torch.allclose(coords[0, 0], torch.tensor(peak), atol=0.05, rtol=0), (coords, peak)
    assert abs(float(scores) - float(gaussian(*peak).max())) < 1e-6   # the unblurred peak value


def test_dark_leaves_peaks_near_the_border_at_the_argmax():
    coords, _ = dark(gaussian(1.3, 30.4))      # argmax x = 1: not 1 < x
    assert coords.tolist() == [[[1.0, 30.0]]]
    coords, _ = dark(gaussian(20.2, 61.6))     # argmax y = 62 = h - 2: not y < h - 2
    assert coords.tolist() == [[[20.0, 62.0]]]


def test_dark_blur_size_changes_nothing_on_a_gaussian():
    # Blurring a Gaussian keeps it a Gaussian around the same peak: any odd size decodes the same point.
    for k in (3, 7, 11, 15):
        coords, _ = dark(gaussian(20.3, 30.7), blur_kernel=k)
        assert torch.allclose(coords[0, 0], torch.tensor([20.3, 30.7]), atol=0.05, rtol=0), (k, coords)


def test_decode_back_to_image_pixels():
    keypoints, scores = decode(gaussian(20.3, 30.7), CENTER, SCALE, "dark")
    expected = torch.tensor([100 + (20.3 - 24) * 4, 200 + (30.7 - 32) * 4])
    assert torch.allclose(keypoints[0, 0], expected, atol=0.2, rtol=0)
    keypoints, _ = decode(gaussian(20.3, 30.7), CENTER, SCALE, "classic")
    assert keypoints[0, 0].tolist() == [100 + (20.25 - 24) * 4, 200 + (30.75 - 32) * 4]


def test_flip_back_mirrors_and_swaps_the_joints():
    # 3 joints, 1 and 2 a left/right pair; the mirrored crop's joint 1 peak at column 2 is joint 2 at column 9.
    index = flip_index([(1, 2)], 3)
    assert index.tolist() == [0, 2, 1]
    flipped = torch.zeros(1, 3, 6, 12)
    flipped[0, 1, 3, 2] = 1.0
    flipped[0, 0, 3, 0] = 1.0
    merged = flip_back(torch.zeros(1, 3, 6, 12), flipped, index)
    assert merged[0, 2, 3, 9] == 0.5 and merged[0, 0, 3, 11] == 0.5 and merged.sum() == 1.0
    shifted = flip_back(torch.zeros(1, 3, 6, 12), flipped, index, shift=True)
    assert shifted[0, 2, 3, 10] == 0.5 and shifted[0, 0].sum() == 0   # the last column's value falls off
    # The shift moves columns right and keeps column 0.
    edge = torch.zeros(1, 3, 6, 12)
    edge[0, 0, 0, 11] = 1.0                   # flips to column 0
    assert flip_back(torch.zeros(1, 3, 6, 12), edge, index, shift=True)[0, 0, 0, :2].tolist() == [0.5, 0.5]


def test_flip_test_of_a_mirror_image_decodes_the_same_point():
    hm = gaussian(20.3, 30.7).expand(1, 3, 64, 48).contiguous()
    keypoints, _ = decode(hm, CENTER, SCALE, "dark", flipped=hm.flip(-1), flip_index=flip_index([(1, 2)], 3))
    plain, _ = decode(hm, CENTER, SCALE, "dark")
    torch.testing.assert_close(keypoints, plain)


def test_flip_index_checks_its_pairs():
    with pytest.raises(ValueError, match="for 17 joints but the model predicts 14"):
        flip_index([(1, 2)], 14, expected_joints=17)
    with pytest.raises(ValueError, match="joint 16"):
        flip_index([(12, 16)], 14)
    with pytest.raises(ValueError, match="twice"):
        flip_index([(1, 2), (2, 3)], 5)


def test_no_people():
    keypoints, scores = decode(torch.zeros(0, 17, 64, 48), torch.zeros(0, 2), torch.zeros(0, 2), "dark")
    assert keypoints.shape == (0, 17, 2) and scores.shape == (0, 17)


@pytest.mark.parametrize("kwargs,message", [
    (dict(method="argmax"), "method must be one of classic, dark"),
    (dict(centers=torch.zeros(2, 2)), r"centers must be a \[K, 2\] tensor with K = 1"),
    (dict(flipped=torch.zeros(1, 1, 64, 48)), "need flip_index"),
    (dict(flipped=torch.zeros(1, 1, 32, 48), flip_index=torch.tensor([0])), "flipped heatmaps must have"),
    (dict(method="dark", blur_kernel=4), "positive odd size"),
])
def test_bad_arguments_are_named(kwargs, message):
    args = dict(heatmaps=gaussian(3, 3), centers=CENTER, scales=SCALE)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        decode(**args)
