"""The reference models against timm's HRNet: same state dict, same outputs, same features, same failures."""
import pytest
import timm
import torch

from hrnet_fast import calibrate_bn, create_model, list_models, resolve_name

SIZE = (64, 64)  # the smallest comfortable valid size: keeps the W64 comparison fast


def timm_and_ours(name: str, **kwargs):
    """timm's model with random weights and calibrated BN, and ours loaded from its state dict (strict)."""
    torch.manual_seed(0)
    ref = calibrate_bn(timm.create_model(name, **kwargs), SIZE, steps=1, batch=2,
                       in_chans=kwargs.get("in_chans", 3))
    with torch.device("meta"):
        ours = create_model(name, **kwargs)
    ref_state = ref.state_dict()
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in ref_state.items()]
    ours.load_state_dict(ref_state, strict=True, assign=True)
    return ref, ours.eval()


def image(h: int, w: int, channels: int = 3) -> torch.Tensor:
    return torch.randn(1, channels, h, w, generator=torch.Generator().manual_seed(h * 1000 + w))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Batch-1 forwards of small tensors gain nothing from intra-op threads, and on a shared 2-core machine
    oversubscribed threads make them many times slower. Ours and timm run under the same setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def small_pair():
    return timm_and_ours("hrnet_w18_small")


@torch.no_grad()
@pytest.mark.parametrize("name", list_models("classification"))
def test_timm_state_dict_loads_and_outputs_match(name):
    ref, ours = timm_and_ours(name)
    x = image(*SIZE)
    expected = ref(x)
    assert expected.abs().max() < 1e3, "BN calibration failed: logits are not O(1)"
    torch.testing.assert_close(ours(x), expected)


@torch.no_grad()
@pytest.mark.parametrize("size", [(224, 224), (256, 192), (288, 288)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_input_sizes(small_pair, size):
    ref, ours = small_pair
    x = image(*size)
    torch.testing.assert_close(ours(x), ref(x))


@torch.no_grad()
def test_size_the_architecture_cannot_take(small_pair):
    ref, ours = small_pair
    x = image(230, 230)
    with pytest.raises(ValueError, match=r"cannot take a 230x230 input.*multiples of 32 such as 224x224"):
        ours(x)
    with pytest.raises(RuntimeError, match="size of tensor"):  # timm fails inside the fusion's add
        ref(x)


@torch.no_grad()
@pytest.mark.parametrize("location", ["incre", ""])
@pytest.mark.parametrize("out_indices", [(0, 1, 2, 3, 4), (1, 2, 3, 4), (0, 2, 4)])
def test_features_only_matches_timm(location, out_indices):
    ref, ours = timm_and_ours("hrnet_w18_small", features_only=True, feature_location=location,
                              out_indices=out_indices)
    assert ours.feature_channels == ref.feature_info.channels()
    x = image(96, 128)
    got, expected = ours(x), ref(x)
    assert [f.shape for f in got] == [f.shape for f in expected]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)


def test_features_only_shapes_of_a_full_variant():
    with torch.device("meta"):
        ours = create_model("hrnet_w32", features_only=True)
        ref = timm.create_model("hrnet_w32", features_only=True)
        x = torch.empty(1, 3, 256, 192)
        assert [f.shape for f in ours(x)] == [f.shape for f in ref(x)]
    assert ours.feature_channels == ref.feature_info.channels() == [64, 128, 256, 512, 1024]


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown model name 'hrnet_w99'") as err:
        create_model("hrnet_w99")
    for name in list_models():
        assert name in str(err.value)


@pytest.mark.parametrize("alias,name", [("HRNet_W18_C", "hrnet_w18"), ("HRNet-W18", "hrnet_w18"),
                                        ("HRNet-W48 (ssld)", "hrnet_w48_ssld"), ("HRNet_W64_C", "hrnet_w64"),
                                        (" hrnet_w18_small ", "hrnet_w18_small")])
def test_aliases(alias, name):
    assert resolve_name(alias) == name
    with torch.device("meta"):
        ours, ref = create_model(alias), timm.create_model(name)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


@torch.no_grad()
def test_wrong_input_channels_and_rank(small_pair):
    _, ours = small_pair
    with pytest.raises(ValueError, match="built for 3 input channels, got 1"):
        ours(image(*SIZE, channels=1))
    with pytest.raises(ValueError, match="4-D NCHW"):
        ours(torch.randn(3, *SIZE))


@torch.no_grad()
def test_other_input_channels_match_timm():
    ref, ours = timm_and_ours("hrnet_w18_small", in_chans=1, num_classes=10)
    x = image(*SIZE, channels=1)
    torch.testing.assert_close(ours(x), ref(x))
