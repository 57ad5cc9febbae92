"""hrnet_fast.imagefolder: the evaluation preprocessing equals torchvision's bit for bit; discovery finds what
torchvision's ImageFolder finds; bad folders and labels files give errors that name the problem."""
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets, transforms

from hrnet_fast.imagefolder import (IMAGENET_MEAN, IMAGENET_STD, EvalImageDataset, center_crop_offsets,
                                    find_image_folder, normalize, preprocess, read_labels_file, resize_center_crop)


def torchvision_transform(resize: int, crop: int) -> transforms.Compose:
    return transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(crop), transforms.ToTensor(),
                               transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def random_image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """Smooth gradients plus noise (so resampling has something to average), converted to ``mode``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1),
                     (xx + yy) * 255 // max(width + height - 2, 1)], axis=-1)
    noisy = np.clip(base + rng.integers(-40, 41, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy).convert(mode)


# Sizes: larger and smaller than the resize (down- and up-sampling), portrait and landscape, extreme aspect
# ratios, already at the resize, and sizes whose centre-crop offset is exactly .5 before rounding (257, 259).
SIZES = [(500, 375), (375, 500), (257, 300), (259, 401), (1000, 97), (97, 1000), (256, 256), (224, 224),
         (60, 45), (73, 72), (101, 333)]


@pytest.mark.parametrize("resize,crop,mode,sizes", [
    (256, 224, "RGB", SIZES), (288, 288, "RGB", SIZES), (72, 64, "RGB", SIZES),
    # Other modes only go through convert("RGB") first; a few sizes show it is the same conversion.
    (256, 224, "L", SIZES[:3]), (256, 224, "RGBA", SIZES[:3]), (256, 224, "P", SIZES[:3]),
])
def test_preprocess_equals_torchvision_exactly(resize, crop, mode, sizes):
    reference = torchvision_transform(resize, crop)
    for seed, (w, h) in enumerate(sizes):
        image = random_image(w, h, mode, seed)
        expected = reference(image.convert("RGB"))  # torchvision's ImageFolder loader converts to RGB
        torch.testing.assert_close(preprocess(image, resize, crop), expected, rtol=0, atol=0,
                                   msg=lambda m: f"{w}x{h} {mode} resize {resize} crop {crop}: {m}")


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_dataset_decodes_files_as_torchvision_does(tmp_path, suffix):
    paths = []
    for i, (w, h) in enumerate(SIZES[:4]):
        path = tmp_path / f"{i}.{suffix}"
        random_image(w, h, seed=i).save(path)
        paths.append(str(path))
    dataset = EvalImageDataset([(p, 7) for p in paths], resize=72, crop=64)
    reference = torchvision_transform(72, 64)
    for i, path in enumerate(paths):
        pixels, label, index, ok = dataset[i]
        assert (label, index, ok) == (7, i, True)
        assert pixels.dtype == torch.uint8 and pixels.shape == (3, 64, 64)
        with Image.open(path) as image:
            expected = reference(image.convert("RGB"))
        torch.testing.assert_close(normalize(pixels), expected, rtol=0, atol=0)


def test_crop_offsets_round_half_to_even():
    # (257 - 224) / 2 = 16.5 -> 16 and (259 - 224) / 2 = 17.5 -> 18, as torchvision's CenterCrop.
    assert center_crop_offsets(257, 259, 224) == (16, 18)
    assert center_crop_offsets(224, 300, 224) == (0, 38)


def test_normalize_batch_matches_per_image():
    images = torch.stack([resize_center_crop(random_image(90, 70, seed=s), 72, 64) for s in range(3)])
    batch = normalize(images)
    for i in range(3):
        torch.testing.assert_close(batch[i], normalize(images[i]), rtol=0, atol=0)
    with pytest.raises(TypeError, match="uint8"):
        normalize(images.float())


@pytest.mark.parametrize("resize,crop,message", [(64, 72, "must not exceed"), (0, 0, "positive")])
def test_bad_sizes_are_rejected(resize, crop, message):
    with pytest.raises(ValueError, match=message):
        resize_center_crop(random_image(80, 80), resize, crop)
    with pytest.raises(ValueError, match=message):
        EvalImageDataset([], resize, crop)


def test_unreadable_images_are_flagged_not_fatal(tmp_path):
    good = tmp_path / "good.jpg"
    random_image(120, 90).save(good)
    data = good.read_bytes()
    broken = {"truncated.jpg": data[: len(data) // 2], "empty.png": b"", "text.jpg": b"not an image",
              "garbage.png": bytes(range(256)) * 4}
    for name, content in broken.items():
        (tmp_path / name).write_bytes(content)
    dataset = EvalImageDataset([(str(good), 1)] + [(str(tmp_path / n), 1) for n in broken], resize=72, crop=64)
    flags = [dataset[i][3] for i in range(len(dataset))]
    assert flags == [True] + [False] * len(broken)
    assert torch.equal(dataset[1][0], torch.zeros(3, 64, 64, dtype=torch.uint8))


def make_tree(root, layout):
    """layout: {relative file path: kind}; kind 'image' writes a small PNG/JPEG, 'text' a non-image file."""
    for i, (rel, kind) in enumerate(layout.items()):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "image":
            random_image(40 + i, 30 + 2 * i, seed=i).save(path)
        else:
            path.write_text("notes")


def test_find_image_folder_matches_torchvision(tmp_path):
    make_tree(tmp_path, {"b_cls/1.png": "image", "b_cls/0.JPG": "image", "b_cls/sub/2.jpeg": "image",
                         "a_cls/z.png": "image", "a_cls/readme.txt": "text", "C_cls/x.bmp": "image",
                         "top_level.png": "image"})
    samples, classes = find_image_folder(str(tmp_path))
    reference = datasets.ImageFolder(str(tmp_path))
    assert classes == reference.classes == ["C_cls", "a_cls", "b_cls"]
    assert samples == reference.samples
    assert len(samples) == 5  # the top-level file and the .txt are not samples


def test_find_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="data folder not found"):
        find_image_folder(str(tmp_path / "missing"))
    flat = tmp_path / "flat"
    make_tree(flat, {"a.png": "image"})
    with pytest.raises(ValueError, match="no class sub-folders"):
        find_image_folder(str(flat))
    no_images = tmp_path / "no_images"
    make_tree(no_images, {"a/notes.txt": "text", "b/notes.txt": "text"})
    with pytest.raises(ValueError, match="no images under"):
        find_image_folder(str(no_images))
    one_empty = tmp_path / "one_empty"
    make_tree(one_empty, {"a/1.png": "image", "b/notes.txt": "text", "c/2.png": "image"})
    with pytest.raises(ValueError, match="1 class folder.*no images: b$"):
        find_image_folder(str(one_empty))


def test_read_labels_file(tmp_path):
    make_tree(tmp_path, {"x/one image.png": "image", "two.jpg": "image"})
    labels = tmp_path / "labels.txt"
    labels.write_text("# comment\nx/one image.png 3\n\ntwo.jpg   0\n")
    assert read_labels_file(str(tmp_path), str(labels)) == [(os.path.join(str(tmp_path), "x/one image.png"), 3),
                                                            (os.path.join(str(tmp_path), "two.jpg"), 0)]


@pytest.mark.parametrize("content,error,message", [
    ("two.jpg\n", ValueError, r"labels.txt:1: expected"),
    ("two.jpg 0\ntwo.jpg cat\n", ValueError, r"labels.txt:2: label 'cat' is not an integer"),
    ("two.jpg -1\n", ValueError, "negative"),
    ("missing.jpg 0\n", FileNotFoundError, r"labels.txt:1: image not found"),
    ("# nothing\n", ValueError, "lists no images"),
])
def test_read_labels_file_errors(tmp_path, content, error, message):
    make_tree(tmp_path, {"two.jpg": "image"})
    labels = tmp_path / "labels.txt"
    labels.write_text(content)
    with pytest.raises(error, match=message):
        read_labels_file(str(tmp_path), str(labels))
    with pytest.raises(FileNotFoundError, match="labels file not found"):
        read_labels_file(str(tmp_path), str(tmp_path / "nope.txt"))
