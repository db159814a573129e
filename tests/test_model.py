import pytest
import torch
import torchvision
from torch import nn

from alexnet.config import ConfigError, ModelConfig
from alexnet.lrn import LocalResponseNorm
from alexnet.model import (
    AlexNet,
    build_model,
    from_torchvision_state_dict,
    to_torchvision_state_dict,
)
from alexnet.summary import summary_dict


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_paper_parameter_count():
    assert n_params(build_model(variant="paper")) == 60_965_224


def test_owt_parameter_count_matches_torchvision():
    assert (
        n_params(build_model(variant="owt")) == 61_100_840 == n_params(torchvision.models.alexnet())
    )


def test_one_tower_has_the_ungrouped_count():
    assert n_params(build_model(variant="paper", towers=1)) == 62_378_344


@pytest.mark.parametrize("size,pad", [(224, 2), (227, 0)])
def test_paper_stage_shapes(size, pad):
    model = build_model(variant="paper", input_size=size)
    assert model.conv1.padding == (pad, pad)
    shapes = {r["name"]: tuple(r["output_shape"]) for r in summary_dict(model)["layers"]}
    assert shapes["conv1"] == (96, 55, 55)
    assert shapes["pool1"] == (96, 27, 27)
    assert shapes["conv2"] == (256, 27, 27)
    assert shapes["pool2"] == (256, 13, 13)
    assert shapes["conv3"] == (384, 13, 13)
    assert shapes["conv4"] == (384, 13, 13)
    assert shapes["conv5"] == (256, 13, 13)
    assert shapes["pool5"] == (256, 6, 6)
    assert shapes["fc7"] == (4096,)
    assert shapes["fc8"] == (1000,)


def test_paper_multiply_adds():
    # ~724M multiply-adds per image (ALEXNET.md, §3 with groups).
    assert summary_dict(build_model())["macs"] == 724_406_816


def test_towers_are_groups_in_conv2_4_5_only():
    m = build_model(variant="paper")
    assert [m.conv1.groups, m.conv2.groups, m.conv3.groups, m.conv4.groups, m.conv5.groups] == [
        1,
        2,
        1,
        2,
        2,
    ]
    m1 = build_model(variant="paper", towers=1)
    assert {m1.conv2.groups, m1.conv4.groups, m1.conv5.groups} == {1}


def test_paper_init_by_layer_name():
    torch.manual_seed(0)
    m = build_model(variant="paper")
    for name, layer in m.named_layers():
        expected_bias = 1.0 if name in {"conv2", "conv4", "conv5", "fc6", "fc7"} else 0.0
        assert torch.all(layer.bias == expected_bias), name
        assert abs(layer.weight.mean().item()) < 2e-3, name
        assert layer.weight.std().item() == pytest.approx(0.01, rel=0.05), name
    m = build_model(variant="paper", init_bias=0.1)
    assert torch.all(m.conv2.bias == 0.1) and torch.all(m.conv1.bias == 0.0)


def test_layers_are_in_the_papers_order():
    m = build_model(variant="paper")
    assert isinstance(m.norm1, LocalResponseNorm) and isinstance(m.norm2, LocalResponseNorm)
    assert (m.norm1.k, m.norm1.size, m.norm1.alpha, m.norm1.beta) == (2.0, 5, 1e-4, 0.75)
    assert m.pool1.kernel_size == 3 and m.pool1.stride == 2
    assert m.dropout_on == "outputs" and m.drop6.p == 0.5


def test_dropout_acts_on_fc6_and_fc7_outputs():
    torch.manual_seed(0)
    m = build_model(variant="small", num_classes=10).train()
    x = torch.randn(4, 3, 32, 32)
    seen = {}
    m.drop6.register_forward_hook(lambda mod, i, o: seen.__setitem__("drop6_in", i[0]))
    m.act6.register_forward_hook(lambda mod, i, o: seen.__setitem__("act6_out", o))
    m(x)
    assert torch.equal(seen["drop6_in"], seen["act6_out"])
    # In eval mode dropout is the identity (inverted dropout == the paper's x0.5 at test).
    m.eval()
    assert torch.equal(m(x), m(x))


def test_every_parameter_receives_a_gradient():
    for variant, size in [("paper", 224), ("owt", 224), ("small", 32)]:
        torch.manual_seed(0)
        m = build_model(
            variant=variant,
            num_classes=10,
            init="kaiming",
            norm="batchnorm" if variant == "small" else None,
        )
        m(torch.randn(2, 3, size, size)).logsumexp(1).sum().backward()
        missing = [
            n for n, p in m.named_parameters() if p.grad is None or not torch.any(p.grad != 0)
        ]
        assert not missing, (variant, missing)


def test_owt_round_trip_with_torchvision():
    torch.manual_seed(0)
    # PyTorch's conv kernels: the same bits as torchvision's network.
    ours = build_model(variant="owt", conv_impl="direct").eval()
    tv = torchvision.models.alexnet().eval()
    tv.load_state_dict(to_torchvision_state_dict(ours.state_dict()), strict=True)
    x = torch.randn(2, 3, 224, 224)
    assert torch.equal(ours(x), tv(x))
    # ...and back: torchvision's weights into a fresh owt model.
    back = build_model(variant="owt", conv_impl="direct").eval()
    back.load_state_dict(from_torchvision_state_dict(tv.state_dict()), strict=True)
    assert torch.equal(back(x), tv(x))
    # The default (conv2-conv5 in the Fourier domain): equal to float32 rounding.
    fourier = build_model(variant="owt").eval()
    fourier.load_state_dict(back.state_dict())
    assert ((fourier(x) - tv(x)).norm() / tv(x).norm()).item() < 1e-5


def test_small_variant_any_channels():
    m = build_model(variant="small", in_channels=1, input_size=28, num_classes=10)
    assert m(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert build_model(variant="small")(torch.randn(2, 3, 32, 32)).shape == (2, 1000)


def test_features_are_fc7():
    m = build_model(variant="small", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    f = m.forward_features(x)
    assert f.shape == (2, 1024)
    assert torch.allclose(m.forward_head(f), m(x))
    assert (f >= 0).all()  # after fc7's ReLU


# ---------------------------------------------------------------- ablation switches


def test_activation_switch():
    m = build_model(variant="small", activation="tanh")
    assert isinstance(m.act1, nn.Tanh) and isinstance(m.act7, nn.Tanh)


def test_norm_switch():
    assert isinstance(build_model(variant="small", norm="none").norm1, nn.Identity)
    m = build_model(variant="small", norm="batchnorm")
    assert isinstance(m.bn1, nn.BatchNorm2d) and isinstance(m.norm1, nn.Identity)
    assert isinstance(build_model(variant="owt", norm="lrn").norm2, LocalResponseNorm)
    sum_m = build_model(variant="paper", lrn_alpha="sum")
    assert sum_m.norm1.alpha_convention == "sum"


def test_pooling_switch_changes_shapes():
    m = build_model(variant="paper", pooling="non-overlapping")
    assert m.pool1.kernel_size == 2 and m.pool1.stride == 2
    assert m.geo.sizes["pool5"] == 6  # 55 -> 27 -> 13 -> 6 either way
    assert m(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_dropout_switch():
    assert build_model(variant="small", dropout=0.0).drop6.p == 0.0


@pytest.mark.parametrize("layer", ["conv3", "conv4", "conv5"])
def test_drop_conv(layer):
    m = build_model(variant="paper", drop_conv=[layer])
    assert getattr(m, layer) is None
    assert m(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    # pool5 now sees the last remaining conv layer's channels.
    assert m.fc6.in_features == {"conv3": 256, "conv4": 256, "conv5": 384}[layer] * 36


def test_extra_conv6():
    m = build_model(variant="paper", extra_conv6=True)
    assert m.conv6 is not None and m.conv6.in_channels == 256
    assert n_params(m) == 60_965_224 + 256 * 128 * 9 + 256
    assert m(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_num_classes_and_width():
    m = build_model(variant="paper", num_classes=10, width=0.5)
    assert m.fc8.out_features == 10 and m.conv1.out_channels == 48


# ---------------------------------------------------------------- bad input


def test_unknown_variant():
    with pytest.raises(ConfigError, match=r"unknown model variant 'vgg'.*paper.*owt.*small"):
        build_model(variant="vgg")


def test_input_too_small_names_the_minimum():
    with pytest.raises(ConfigError, match=r"input_size=32 is too small.*allowed: input_size >= 63"):
        build_model(variant="paper", input_size=32)
    with pytest.raises(ConfigError, match=r"input_size >= \d+"):
        build_model(variant="small", input_size=4)


def test_wrong_channel_count_is_clear():
    m = build_model(variant="small", in_channels=1, input_size=28)
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\).*in_channels=1"):
        m(torch.randn(2, 3, 28, 28))
    with pytest.raises(ValueError, match="expected 28x28"):
        m(torch.randn(2, 1, 32, 32))


def test_bad_values_rejected():
    with pytest.raises(ConfigError, match="dropout"):
        ModelConfig(dropout=1.5)
    with pytest.raises(ConfigError, match="drop_conv"):
        ModelConfig(drop_conv=["conv1"])


def test_default_model_is_the_paper():
    assert isinstance(AlexNet(), AlexNet) and AlexNet().cfg.variant == "paper"
