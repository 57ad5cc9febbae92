"""Box to center/scale and the crop maps (official get_affine_transform geometry, mmpose's aspect fix), and the
affine crop's bilinear sampling, against hand-computed cases."""
import pytest
import torch

from hrnet_fast.pose import box_to_center_scale, crop_reference, crop_theta, to_image

ASPECT = 192 / 256


def test_tall_box_grows_its_width():
    # w = 100 < 0.75 * 200 = 150: w becomes 150; times 1.25.
    centers, scales = box_to_center_scale(torch.tensor([[10., 20., 110., 220.]]), ASPECT, 1.25)
    assert centers.tolist() == [[60.0, 120.0]]
    assert scales.tolist() == [[187.5, 250.0]]


def test_wide_box_grows_its_height():
    # w = 300 > 0.75 * 100: h becomes 300 / 0.75 = 400.
    _, scales = box_to_center_scale(torch.tensor([[0., 0., 300., 100.]]), ASPECT, 1.0)
    assert scales.tolist() == [[300.0, 400.0]]


def test_box_at_the_aspect_ratio_and_degenerate_boxes():
    centers, scales = box_to_center_scale(torch.tensor([[0., 0., 75., 100.], [5., 7., 5., 7.]]), ASPECT, 1.25)
    assert scales.tolist() == [[93.75, 125.0], [0.0, 0.0]]
    assert centers.tolist() == [[37.5, 50.0], [5.0, 7.0]]


def test_no_boxes():
    centers, scales = box_to_center_scale(torch.zeros(0, 4), ASPECT)
    assert centers.shape == (0, 2) and scales.shape == (0, 2)
    centers, _ = box_to_center_scale([], ASPECT)
    assert centers.shape == (0, 2)


@pytest.mark.parametrize("box,message", [([10., 0., 5., 10.], "x2 < x1"), ([0., 10., 5., 2.], "x2 < x1 or y2 < y1"),
                                         ([0., float("nan"), 5., 9.], "NaN or infinite"),
                                         ([0., 0., float("inf"), 9.], "NaN or infinite")])
def test_bad_boxes_are_named(box, message):
    with pytest.raises(ValueError, match=message) as info:
        box_to_center_scale(torch.tensor([[0., 0., 1., 1.], box]), ASPECT)
    assert "box 1" in str(info.value)


def test_boxes_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"\[K, 4\]"):
        box_to_center_scale(torch.zeros(3, 5), ASPECT)


def test_crop_theta_maps_output_pixels_to_image_pixels():
    # Crop 192x256 pixels around (60, 120) into 192x256: one image pixel per crop pixel, crop x 96 -> image x 60.
    theta = crop_theta(torch.tensor([[60., 120.]]), torch.tensor([[192., 256.]]), (256, 192))
    for (xo, yo), (xi, yi) in (((96, 128), (60, 120)), ((0, 0), (-36, -8)), ((191, 255), (155, 247))):
        assert (theta[0] @ torch.tensor([xo, yo, 1.])).tolist() == [xi, yi]
    # Twice the size: two image pixels per crop pixel.
    theta = crop_theta(torch.tensor([[60., 120.]]), torch.tensor([[384., 512.]]), (256, 192))
    assert (theta[0] @ torch.tensor([0., 0., 1.])).tolist() == [60 - 192, 120 - 256]


def test_flipped_crop_theta_mirrors_the_columns():
    c, s = torch.tensor([[60., 120.]]), torch.tensor([[192., 256.]])
    plain, flipped = crop_theta(c, s, (256, 192)), crop_theta(c, s, (256, 192), flip=True)
    # Flipped column 0 is plain column 191 (image x 155); flipped column 191 is plain column 0.
    assert (flipped[0] @ torch.tensor([0., 10., 1.])).tolist() == [155.0, 2.0]
    assert (flipped[0] @ torch.tensor([191., 10., 1.])).tolist() == (plain[0] @ torch.tensor([0., 10., 1.])).tolist()


def test_heatmap_coordinates_back_to_the_image():
    # A 64x48 heatmap over a 192x256 crop around (60, 120): 4 image pixels per heatmap pixel, center at (24, 32).
    c, s = torch.tensor([[60., 120.]]), torch.tensor([[192., 256.]])
    coords = torch.tensor([[[24., 32.], [0., 0.], [24.25, 31.5]]])
    assert to_image(coords, c, s, (64, 48)).tolist() == [[[60., 120.], [-36., -8.], [61., 118.]]]


def ramp_image(h=20, w=30):
    """R = 5 * column, G = 7 * row, B = 100: bilinear sampling of it is exact."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack((5 * xs, 7 * ys, torch.full_like(xs, 100)), dim=-1).to(torch.uint8)


def shift_theta(dx, dy):
    return torch.tensor([[[1., 0., dx], [0., 1., dy]]])


def test_crop_samples_bilinearly_between_pixel_centers():
    out = crop_reference(ramp_image(), shift_theta(2.25, 3.5), 4, 5, mean=(0, 0, 0), std=(1, 1, 1))
    # Output (x, y) samples (x + 2.25, y + 3.5): R = 5 * (x + 2.25) / 255, G = 7 * (y + 3.5) / 255.
    torch.testing.assert_close(out[0, 0, 1, 2], torch.tensor(5 * 4.25 / 255))
    torch.testing.assert_close(out[0, 1, 2, 0], torch.tensor(7 * 5.5 / 255))
    torch.testing.assert_close(out[0, 2], torch.full((4, 5), 100 / 255))


def test_crop_normalises_per_channel():
    image = torch.full((4, 4, 3), 51, dtype=torch.uint8)  # 51 / 255 = 0.2
    out = crop_reference(image, shift_theta(0., 0.), 2, 2, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.1))
    expected = torch.tensor([(0.2 - 0.1) / 0.5, 0.0, (0.2 - 0.3) / 0.1])
    torch.testing.assert_close(out[0, :, 1, 1], expected)


def test_taps_outside_the_image_count_as_zero():
    image = torch.full((10, 10, 3), 200, dtype=torch.uint8)
    flat = dict(mean=(0, 0, 0), std=(1, 1, 1))
    # x_in = -0.5: half the weight on column -1 (outside); -1.0: all of it; 9.0 (the last column): none.
    values = [crop_reference(image, shift_theta(dx, 4.), 1, 1, **flat)[0, 0, 0, 0] * 255 for dx in (-0.5, -1.0, 9.0,
                                                                                                    9.25, 12.0)]
    torch.testing.assert_close(torch.stack(values), torch.tensor([100., 0., 200., 150., 0.]))


def test_box_partly_outside_the_image_reads_black_there():
    image = torch.full((100, 100, 3), 255, dtype=torch.uint8)
    centers, scales = box_to_center_scale(torch.tensor([[-50., 0., 50., 100.]]), 1.0, 1.0)
    out = crop_reference(image, crop_theta(centers, scales, (32, 32)), 32, 32, mean=(0, 0, 0), std=(1, 1, 1))
    # Crop column x samples image x = -50 + 100 x / 32: left of x = -1 nothing, right of 0 everything.
    assert torch.all(out[0, :, :, :15] == 0) and torch.all(out[0, :, :, 17:] == 1)


def test_tiny_and_huge_boxes():
    image = ramp_image(40, 40)
    boxes = torch.tensor([[10., 10., 10.001, 10.001], [-1e6, -1e6, 1e6, 1e6]])
    centers, scales = box_to_center_scale(boxes, 1.0, 1.25)
    out = crop_reference(image, crop_theta(centers, scales, (8, 8)), 8, 8, mean=(0, 0, 0), std=(1, 1, 1))
    assert torch.isfinite(out).all()
    # The tiny box's crop is the colour at (10, 10) everywhere; the huge one is black but the pixel on the image.
    torch.testing.assert_close(out[0, :, 3, 3], torch.tensor([50 / 255, 70 / 255, 100 / 255]), atol=1e-3, rtol=0)
    assert int((out[1].abs().sum(0) > 0).sum()) <= 1


def test_flipped_crop_is_the_mirror_image():
    image = torch.randint(0, 256, (40, 30, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    centers, scales = box_to_center_scale(torch.tensor([[3.3, 5.1, 24.7, 33.9]]), 0.75, 1.25)
    plain = crop_reference(image, crop_theta(centers, scales, (16, 12)), 16, 12)
    flipped = crop_reference(image, crop_theta(centers, scales, (16, 12), flip=True), 16, 12)
    torch.testing.assert_close(flipped, plain.flip(-1))
