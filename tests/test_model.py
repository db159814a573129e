import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from alexnet.apps.summary import summary_dict
from alexnet.config import ConfigError, ModelConfig
from alexnet.network.convert import from_torchvision_state_dict, to_torchvision_state_dict
from alexnet.network.lrn import LocalResponseNorm
from alexnet.network.model import AlexNet, build_model


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def layer_names(m: nn.Module) -> list[str]:
    return [name for name, _ in m.named_children()]


# ---------------------------------------------------------------- checkpoint layout

_BN = ("weight", "bias", "running_mean", "running_var")


def _entries(*layers: tuple[str, tuple[int, ...] | int]) -> list[tuple[str, tuple[int, ...]]]:
    """state_dict (key, shape) pairs in order: conv/fc -> weight, bias; bn -> its 5 entries."""
    out: list[tuple[str, tuple[int, ...]]] = []
    for name, shape in layers:
        if isinstance(shape, int):  # batchnorm over `shape` channels
            out += [(f"{name}.{k}", (shape,)) for k in _BN]
            out.append((f"{name}.num_batches_tracked", ()))
        else:
            out += [(f"{name}.weight", shape), (f"{name}.bias", (shape[0],))]
    return out


_FC_4096 = (("fc6", (4096, 9216)), ("fc7", (4096, 4096)), ("fc8", (1000, 4096)))
_PAPER_CONV = (
    ("conv1", (96, 3, 11, 11)),
    ("conv2", (256, 48, 5, 5)),
    ("conv3", (384, 256, 3, 3)),
    ("conv4", (384, 192, 3, 3)),
    ("conv5", (256, 192, 3, 3)),
)
# Keys and shapes as the model wrote them before the stage-table rewrite: checkpoints saved
# then must load (strict) now, and the parameter order (optimizer state) must not move.
STATE_DICTS = {
    "paper": ({}, _entries(*_PAPER_CONV, *_FC_4096)),
    "owt": (
        {"variant": "owt"},
        _entries(
            ("conv1", (64, 3, 11, 11)),
            ("conv2", (192, 64, 5, 5)),
            ("conv3", (384, 192, 3, 3)),
            ("conv4", (256, 384, 3, 3)),
            ("conv5", (256, 256, 3, 3)),
            *_FC_4096,
        ),
    ),
    "small": (
        {"variant": "small"},
        _entries(
            ("conv1", (48, 3, 5, 5)),
            ("conv2", (128, 24, 5, 5)),
            ("conv3", (192, 128, 3, 3)),
            ("conv4", (192, 96, 3, 3)),
            ("conv5", (128, 96, 3, 3)),
            ("fc6", (1024, 2048)),
            ("fc7", (1024, 1024)),
            ("fc8", (1000, 1024)),
        ),
    ),
    "paper-batchnorm": (
        {"norm": "batchnorm"},
        _entries(
            ("conv1", (96, 3, 11, 11)),
            ("bn1", 96),
            ("conv2", (256, 48, 5, 5)),
            ("bn2", 256),
            ("conv3", (384, 256, 3, 3)),
            ("bn3", 384),
            ("conv4", (384, 192, 3, 3)),
            ("bn4", 384),
            ("conv5", (256, 192, 3, 3)),
            ("bn5", 256),
            *_FC_4096,
        ),
    ),
    "small-batchnorm": (
        {"variant": "small", "norm": "batchnorm", "num_classes": 10},
        _entries(
            ("conv1", (48, 3, 5, 5)),
            ("bn1", 48),
            ("conv2", (128, 24, 5, 5)),
            ("bn2", 128),
            ("conv3", (192, 128, 3, 3)),
            ("bn3", 192),
            ("conv4", (192, 96, 3, 3)),
            ("bn4", 192),
            ("conv5", (128, 96, 3, 3)),
            ("bn5", 128),
            ("fc6", (1024, 2048)),
            ("fc7", (1024, 1024)),
            ("fc8", (10, 1024)),
        ),
    ),
    "paper-one-tower": (
        {"towers": 1},
        _entries(
            ("conv1", (96, 3, 11, 11)),
            ("conv2", (256, 96, 5, 5)),
            ("conv3", (384, 256, 3, 3)),
            ("conv4", (384, 384, 3, 3)),
            ("conv5", (256, 384, 3, 3)),
            *_FC_4096,
        ),
    ),
    "owt-two-towers": (
        {"variant": "owt", "towers": 2},
        _entries(
            ("conv1", (64, 3, 11, 11)),
            ("conv2", (192, 32, 5, 5)),
            ("conv3", (384, 192, 3, 3)),
            ("conv4", (256, 192, 3, 3)),
            ("conv5", (256, 128, 3, 3)),
            *_FC_4096,
        ),
    ),
    "paper-drop-conv3": (
        {"drop_conv": ["conv3"]},
        _entries(
            ("conv1", (96, 3, 11, 11)),
            ("conv2", (256, 48, 5, 5)),
            ("conv4", (384, 128, 3, 3)),
            ("conv5", (256, 192, 3, 3)),
            *_FC_4096,
        ),
    ),
    "paper-drop-conv5": (
        {"drop_conv": ["conv5"]},
        _entries(
            ("conv1", (96, 3, 11, 11)),
            ("conv2", (256, 48, 5, 5)),
            ("conv3", (384, 256, 3, 3)),
            ("conv4", (384, 192, 3, 3)),
            ("fc6", (4096, 13824)),
            ("fc7", (4096, 4096)),
            ("fc8", (1000, 4096)),
        ),
    ),
    "paper-drop-conv3-5": (
        {"drop_conv": ["conv3", "conv4", "conv5"]},
        _entries(("conv1", (96, 3, 11, 11)), ("conv2", (256, 48, 5, 5)), *_FC_4096),
    ),
    "paper-conv6": (
        {"extra_conv6": True},
        _entries(*_PAPER_CONV, ("conv6", (256, 128, 3, 3)), *_FC_4096),
    ),
    "paper-conv6-batchnorm": (
        {"extra_conv6": True, "norm": "batchnorm"},
        _entries(
            ("conv1", (96, 3, 11, 11)),
            ("bn1", 96),
            ("conv2", (256, 48, 5, 5)),
            ("bn2", 256),
            ("conv3", (384, 256, 3, 3)),
            ("bn3", 384),
            ("conv4", (384, 192, 3, 3)),
            ("bn4", 384),
            ("conv5", (256, 192, 3, 3)),
            ("bn5", 256),
            ("conv6", (256, 128, 3, 3)),
            ("bn6", 256),
            *_FC_4096,
        ),
    ),
}


@pytest.mark.parametrize("case", STATE_DICTS)
def test_state_dict_keys_and_shapes_are_pinned(case):
    overrides, expected = STATE_DICTS[case]
    with torch.device("meta"):  # shapes only: no memory, no init
        state = build_model(**overrides).state_dict()
    assert [(k, tuple(v.shape)) for k, v in state.items()] == expected


def test_default_config_is_the_paper():
    m = AlexNet()
    assert m.cfg.variant == "paper" and m.conv1.out_channels == 96
    assert isinstance(m.norm1, LocalResponseNorm) and isinstance(m.norm2, LocalResponseNorm)


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
    assert m.drop6.p == 0.5 and m.drop7.p == 0.5


# print(model) lists these, in the order they run: no placeholders for absent layers.
PAPER_LAYERS = [
    *("conv1", "act1", "norm1", "pool1", "conv2", "act2", "norm2", "pool2"),
    *("conv3", "act3", "conv4", "act4", "conv5", "act5", "pool5"),
    *("fc6", "act6", "drop6", "fc7", "act7", "drop7", "fc8"),
]
OWT_LAYERS = [
    *("conv1", "act1", "pool1", "conv2", "act2", "pool2"),
    *("conv3", "act3", "conv4", "act4", "conv5", "act5", "pool5", "avgpool"),
    *("drop6", "fc6", "act6", "drop7", "fc7", "act7", "fc8"),
]


def test_the_model_holds_only_the_layers_it_runs():
    assert layer_names(build_model(variant="paper")) == PAPER_LAYERS
    assert layer_names(build_model(variant="small")) == PAPER_LAYERS
    assert layer_names(build_model(variant="owt")) == OWT_LAYERS
    m = build_model(variant="small", norm="batchnorm", drop_conv=["conv4"], extra_conv6=True)
    assert layer_names(m) == [
        *("conv1", "bn1", "act1", "pool1", "conv2", "bn2", "act2", "pool2"),
        *("conv3", "bn3", "act3", "conv5", "bn5", "act5", "pool5", "conv6", "bn6", "act_conv6"),
        *("fc6", "act6", "drop6", "fc7", "act7", "drop7", "fc8"),
    ]
    assert not any(isinstance(mod, nn.Identity) for mod in m.modules())
    assert "conv4" not in m.conv_blocks
    assert m.conv_blocks["conv5"] == ("conv5", "bn5", "act5", "pool5")
    assert m.fc_blocks == {
        "fc6": ("fc6", "act6"),
        "fc7": ("drop6", "fc7", "act7"),
        "fc8": ("drop7", "fc8"),
    }


def _paper_by_hand(m: AlexNet, x: torch.Tensor) -> torch.Tensor:
    """Figure 2 written out layer by layer (§3): what the stage tables must add up to."""
    x = m.pool1(m.norm1(m.act1(m.conv1(x))))
    x = m.pool2(m.norm2(m.act2(m.conv2(x))))
    x = m.act3(m.conv3(x))
    x = m.act4(m.conv4(x))
    x = m.pool5(m.act5(m.conv5(x)))
    x = m.drop6(m.act6(m.fc6(torch.flatten(x, 1))))  # §4.2: dropout on fc6's outputs
    x = m.drop7(m.act7(m.fc7(x)))
    return m.fc8(x)


def _owt_by_hand(m: AlexNet, x: torch.Tensor) -> torch.Tensor:
    """torchvision's order: no LRN, adaptive average pool, dropout on fc6's and fc7's inputs."""
    x = m.pool1(m.act1(m.conv1(x)))
    x = m.pool2(m.act2(m.conv2(x)))
    x = m.act4(m.conv4(m.act3(m.conv3(x))))
    x = m.avgpool(m.pool5(m.act5(m.conv5(x))))
    x = m.act6(m.fc6(m.drop6(torch.flatten(x, 1))))
    x = m.act7(m.fc7(m.drop7(x)))
    return m.fc8(x)


@pytest.mark.parametrize(
    "variant,size,by_hand",
    [("small", 32, _paper_by_hand), ("paper", 224, _paper_by_hand), ("owt", 96, _owt_by_hand)],
)
def test_forward_is_figure_2_layer_by_layer(variant, size, by_hand):
    torch.manual_seed(0)
    m = build_model(variant=variant, num_classes=10, conv_impl="direct", init="kaiming")
    x = torch.randn(2, 3, size, size)
    for mode in (m.train, m.eval):  # train: the same dropout masks, so the same placement
        mode()
        torch.manual_seed(1)
        expected = by_hand(m, x)
        torch.manual_seed(1)
        assert torch.equal(m(x), expected)


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
    none = build_model(variant="small", norm="none")
    assert not hasattr(none, "norm1") and not hasattr(none, "bn1")
    m = build_model(variant="small", norm="batchnorm")
    assert isinstance(m.bn1, nn.BatchNorm2d) and not hasattr(m, "norm1")
    assert not hasattr(build_model(variant="small"), "bn1")
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
    n = layer[-1]
    assert not {layer, f"act{n}"} & set(layer_names(m))
    assert layer not in dict(m.named_layers())
    assert hasattr(m, "pool5")  # removing conv5 keeps its stage's pooling
    assert m(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    # pool5 now sees the last remaining conv layer's channels.
    assert m.fc6.in_features == {"conv3": 256, "conv4": 256, "conv5": 384}[layer] * 36


def test_extra_conv6():
    m = build_model(variant="paper", extra_conv6=True)
    assert m.conv6.in_channels == m.conv6.out_channels == 256 and m.conv6.groups == 2
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


def test_paper_dropout_is_the_papers_and_old_files_keep_inverted(tmp_path):
    # §4.2: training zeroes outputs and leaves the rest unchanged; test time halves them.
    from alexnet.network.model import PaperDropout

    assert isinstance(build_model(variant="paper", num_classes=10).drop6, PaperDropout)
    for variant in ("owt", "small"):
        assert type(build_model(variant=variant, num_classes=10).drop6) is torch.nn.Dropout
    d = PaperDropout(0.5)
    x = torch.rand(4096) + 0.5
    y = d.train()(x)
    kept = y != 0
    assert torch.equal(y[kept], x[kept]) and 0.45 < kept.float().mean() < 0.55
    assert torch.equal(d.eval()(x), x * 0.5)
    # Weights files from before model.dropout_form existed were trained with inverted
    # dropout: they load with it, or their fc layers would see halved inputs.
    from alexnet.data.preprocess import Preprocessing
    from alexnet.engine.checkpoint import export_weights
    from alexnet.engine.inference import load_model

    model = build_model(variant="paper", num_classes=3, input_size=227)
    prep = Preprocessing(
        (256, 256, 3), 227, mean=np.zeros((256, 256, 3), np.float32), classes=("a", "b", "c")
    )
    old = {"variant": "paper", "num_classes": 3, "input_size": 227}
    export_weights(tmp_path / "old.safetensors", model.state_dict(), old, prep)
    export_weights(
        tmp_path / "new.safetensors", model.state_dict(), {**old, "dropout_form": None}, prep
    )
    assert type(load_model(tmp_path / "old.safetensors").model.drop6) is torch.nn.Dropout
    assert isinstance(load_model(tmp_path / "new.safetensors").model.drop6, PaperDropout)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_relu_lrn_pool_fusion_changes_no_bits_and_steps_aside_for_hooks(dtype):
    # The model runs act1 -> norm1 -> pool1 (and act2 -> norm2 -> pool2) as one fused op
    # where the C kernels apply; a hook on any of them must still see its layer's output, so
    # hooks turn the fusion off for that stage.
    from alexnet.network import lrn as lrn_module

    if not lrn_module.fuses_relu(
        torch.zeros(1, 8, 2, 2).contiguous(memory_format=torch.channels_last), 5, 1
    ):
        pytest.skip("no native LRN kernel here")
    torch.manual_seed(0)
    net = build_model(variant="small", num_classes=10).to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    fused: list[str] = []
    original = lrn_module._NativeLRNPoolFunction.forward

    def spy(ctx, x, *args):
        fused.append(f"relu={args[5]}")
        return original(ctx, x, *args)

    results = []
    seen: list[torch.Tensor] = []
    for hooked in (None, "act1", "norm1", "pool1"):
        fused.clear()
        handle = (
            getattr(net, hooked).register_forward_hook(lambda m, i, o: seen.append(o))
            if hooked
            else None
        )
        net.zero_grad()
        torch.manual_seed(1)  # the same dropout masks
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(lrn_module._NativeLRNPoolFunction, "forward", staticmethod(spy))
            with torch.autocast("cpu", torch.bfloat16, enabled=dtype is not None):
                out = net(x)
        out.float().sum().backward()
        results.append((out.detach(), net.conv1.weight.grad.clone()))
        if handle:
            handle.remove()
        # Both stages fused without hooks. A hook on act1 leaves norm1 -> pool1 to fuse;
        # one on norm1 or pool1 leaves stage 1 as separate ops (or ReLU -> LRN fused).
        expected = {None: [True, True], "act1": [False, True], "norm1": [True], "pool1": [True]}
        assert fused == [f"relu={r}" for r in expected[hooked]]
    assert len(seen) == 3
    assert seen[0].shape[2:] == (32, 32) and (seen[0] >= 0).all()  # act1's own output
    assert seen[2].shape[2:] == (16, 16)  # pool1's (ceil mode: 32 -> 16)
    for out, grad in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(grad, results[0][1])


def test_fusion_never_skips_backward_hooks_subclasses_or_double_backward():
    from alexnet.network import lrn as lrn_module

    if not lrn_module.fuses_relu(
        torch.zeros(1, 8, 2, 2).contiguous(memory_format=torch.channels_last), 5, 1
    ):
        pytest.skip("no native LRN kernel here")
    torch.manual_seed(0)
    net = build_model(variant="small", num_classes=10, dropout=0.0)
    net = net.to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    called = []
    handle = net.pool1.register_full_backward_hook(lambda m, gi, go: called.append("pool1"))
    net(x).sum().backward()
    handle.remove()
    assert called == ["pool1"]

    class HalfReLU(nn.ReLU):  # a subclass with its own forward must run as written
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return super().forward(t) * 0.5

    ref = net.norm1(torch.relu(net.conv1(x)) * 0.5)
    net.act1 = HalfReLU()
    out = net._run(("conv1", "act1", "norm1"), x)
    assert torch.equal(out, ref)

    # The C backward has no backward of its own: a clear error, not a silent zero.
    xr = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(
        build_model(variant="small").to(memory_format=torch.channels_last)(xr).square().sum(),
        xr,
        create_graph=True,
    )
    with pytest.raises(RuntimeError, match="differentiate twice"):
        g.sum().backward()
