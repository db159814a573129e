"""`alexnet convert caffe`: small caffemodels written here in both of Caffe's formats, read
back into the paper network and checked against an independent numpy forward pass of the
same Caffe definition."""

import json
import struct

import numpy as np
import pytest
import torch

from alexnet.cli import main
from alexnet.engine.inference import load_model
from alexnet.network.caffe import read_mean
from alexnet.network.model import build_model

# --------------------------------------------------------------------------------------
# A protobuf writer (the wire format; no protobuf package)


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _int(number: int, v: int) -> bytes:
    return _key(number, 0) + _varint(v)


def _bytes(number: int, payload: bytes) -> bytes:
    return _key(number, 2) + _varint(len(payload)) + payload


def _float(number: int, v: float) -> bytes:
    return _key(number, 5) + struct.pack("<f", v)


def _blob(a: np.ndarray, v1: bool) -> bytes:
    data = _bytes(5, a.astype("<f4").tobytes())
    if v1:  # num, channels, height, width, padded on the left with 1s
        dims = (1,) * (4 - a.ndim) + a.shape
        return b"".join(_int(i + 1, d) for i, d in enumerate(dims)) + data
    return _bytes(7, _bytes(1, b"".join(_varint(d) for d in a.shape))) + data


V1 = {"Convolution": 4, "InnerProduct": 14, "LRN": 15, "Pooling": 17, "ReLU": 18, "Dropout": 6,
      "Softmax": 20, "Data": 5}  # fmt: skip


def _layer(name: str, kind: str, blobs: list[np.ndarray], v1: bool, conv=None, lrn=None,
           pool=None) -> bytes:  # fmt: skip
    out = _bytes(4 if v1 else 1, name.encode())
    out += _int(5, V1[kind]) if v1 else _bytes(2, kind.encode())
    for b in blobs:
        out += _bytes(6 if v1 else 7, _blob(b, v1))
    if conv:
        p = _int(1, conv["out"]) + _int(4, conv["k"]) + _int(6, conv["stride"])
        p += _int(3, conv["pad"]) + _int(5, conv["group"])
        out += _bytes(10 if v1 else 106, p)
    if lrn:
        p = _int(1, 5) + _float(2, 1e-4) + _float(3, 0.75) + _float(5, lrn["k"])
        out += _bytes(18 if v1 else 118, p)
    if pool:  # MAX = 0, kernel_size, stride
        p = _int(1, pool.get("pool", 0)) + _int(2, pool["k"]) + _int(3, pool["stride"])
        out += _bytes(19 if v1 else 121, p)
    return _bytes(2 if v1 else 100, out)


# bvlc_alexnet's layers (deploy.prototxt): conv + relu (+ norm) (+ pool), fc + relu + drop
CONVS = {"conv1": (4, 0, 1), "conv2": (1, 2, 2), "conv3": (1, 1, 1), "conv4": (1, 1, 2),
         "conv5": (1, 1, 2)}  # stride, pad, group  # fmt: skip


def _caffe_weights(width: float = 0.25, fc: int = 32, classes: int = 5, seed: int = 0):
    """Random Caffe-layout weights (conv1 on BGR input) of a small AlexNet-shaped net."""
    shapes = build_model(variant="paper", width=width, fc_width=fc, num_classes=classes,
                         input_size=227).state_dict()  # fmt: skip
    rng = np.random.default_rng(seed)
    w = {}
    for k, v in shapes.items():
        scale = 0.05 if k.endswith("weight") else 0.1
        w[k] = (rng.standard_normal(tuple(v.shape)) * scale).astype(np.float32)
    return w


def write_caffemodel(path, w: dict, v1: bool, k: float = 1.0, caffenet: bool = False,
                     convs: dict | None = None) -> None:  # fmt: skip
    """bvlc_alexnet's layers; ``caffenet``: CaffeNet's order (pooling before LRN)."""
    parts = [_bytes(1, b"AlexNet")]
    parts.append(_layer("data", "Data", [], v1))
    pool = {"k": 3, "stride": 2}
    for name, (stride, pad, group) in (convs or CONVS).items():
        weight = w[f"{name}.weight"]
        conv = {"out": weight.shape[0], "k": weight.shape[2], "stride": stride, "pad": pad,
                "group": group}  # fmt: skip
        parts.append(_layer(name, "Convolution", [weight, w[f"{name}.bias"]], v1, conv=conv))
        parts.append(_layer(f"relu{name[-1]}", "ReLU", [], v1))
        norm = _layer(f"norm{name[-1]}", "LRN", [], v1, lrn={"k": k})
        pooling = _layer(f"pool{name[-1]}", "Pooling", [], v1, pool=pool)
        if name in ("conv1", "conv2"):
            parts += [pooling, norm] if caffenet else [norm, pooling]
        elif name == "conv5":
            parts.append(pooling)
    for name in ("fc6", "fc7", "fc8"):
        parts.append(_layer(name, "InnerProduct", [w[f"{name}.weight"], w[f"{name}.bias"]], v1))
        if name != "fc8":
            parts += [
                _layer(f"relu{name[-1]}", "ReLU", [], v1),
                _layer(f"drop{name[-1]}", "Dropout", [], v1),
            ]
    parts.append(_layer("prob", "Softmax", [], v1))
    path.write_bytes(b"".join(parts))


# --------------------------------------------------------------------------------------
# Caffe's forward pass in numpy


def _conv(x, w, b, stride, pad, group):
    n, _, h, wd = x.shape
    o, cg, kh, kw = w.shape
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    out = np.empty((n, o, ho, wo), np.float64)
    og = o // group
    for g in range(group):
        xs = x[:, g * cg : (g + 1) * cg]
        win = np.lib.stride_tricks.sliding_window_view(xs, (kh, kw), axis=(2, 3))
        win = win[:, :, ::stride, ::stride]  # (n, cg, ho, wo, kh, kw)
        wg = w[g * og : (g + 1) * og]
        out[:, g * og : (g + 1) * og] = np.einsum("nchwij,ocij->nohw", win, wg, optimize=True)
    return out + b[None, :, None, None]


def _lrn(x, k, size=5, alpha=1e-4, beta=0.75):  # Caffe ACROSS_CHANNELS
    sq = np.pad(x * x, ((0, 0), (size // 2, size // 2), (0, 0), (0, 0)))
    window = sum(sq[:, i : i + x.shape[1]] for i in range(size))
    return x * (k + alpha / size * window) ** -beta


def _pool(x, k=3, s=2):
    n, c, h, w = x.shape
    ho, wo = -(-(h - k) // s) + 1, -(-(w - k) // s) + 1  # Caffe rounds up
    out = np.full((n, c, ho, wo), -np.inf)
    for i in range(ho):
        for j in range(wo):
            out[:, :, i, j] = x[:, :, i * s : i * s + k, j * s : j * s + k].max(axis=(2, 3))
    return out


def caffe_forward(x_bgr, w, k=1.0):
    x = x_bgr.astype(np.float64)
    for name, (stride, pad, group) in CONVS.items():
        x = np.maximum(_conv(x, w[f"{name}.weight"], w[f"{name}.bias"], stride, pad, group), 0)
        if name in ("conv1", "conv2"):
            x = _lrn(x, k)
        if name in ("conv1", "conv2", "conv5"):
            x = _pool(x)
    x = x.reshape(len(x), -1)
    for name in ("fc6", "fc7"):
        x = np.maximum(x @ w[f"{name}.weight"].T + w[f"{name}.bias"], 0)
    return x @ w["fc8.weight"].T + w["fc8.bias"]


# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("v1", [True, False], ids=["V1 layers", "layer"])
def test_converted_caffemodel_computes_caffes_network(tmp_path, v1, capsys):
    w = _caffe_weights()
    write_caffemodel(tmp_path / "net.caffemodel", w, v1)
    out = tmp_path / "net.safetensors"
    assert main(["convert", "caffe", str(tmp_path / "net.caffemodel"), "--out", str(out)]) == 0
    assert "conv1->conv1" in capsys.readouterr().out
    lm = load_model(out)
    cfg = lm.model.cfg
    assert (cfg.input_size, cfg.lrn_k, cfg.lrn_across_towers, cfg.dropout_form) == (
        227,
        1.0,
        True,
        "inverted",
    )
    rng = np.random.default_rng(3)
    x_bgr = rng.uniform(-120, 120, (2, 3, 227, 227)).astype(np.float32)  # mean-subtracted
    want = caffe_forward(x_bgr, w)
    with torch.no_grad():  # our model takes RGB: the same pixels, channels reversed
        got = lm.model(torch.from_numpy(x_bgr[:, ::-1].copy())).double().numpy()
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())
    card = (tmp_path / "net.safetensors.MODEL_CARD.md").read_text()
    assert "Converted from Caffe" in card and "BGR to RGB" in card


def test_caffe_mean_and_preprocessing(tmp_path):
    rng = np.random.default_rng(0)
    mean_bgr = rng.uniform(80, 140, (1, 3, 256, 256)).astype(np.float32)
    (tmp_path / "mean.binaryproto").write_bytes(_blob(mean_bgr, v1=True))
    rgb = read_mean(tmp_path / "mean.binaryproto")
    assert rgb.shape == (256, 256, 3)
    assert np.array_equal(rgb, mean_bgr[0, ::-1].transpose(1, 2, 0))
    write_caffemodel(tmp_path / "net.caffemodel", _caffe_weights(), v1=False)
    out = tmp_path / "m.safetensors"
    args = ["convert", "caffe", str(tmp_path / "net.caffemodel"), "--mean",
            str(tmp_path / "mean.binaryproto"), "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    lm = load_model(out)
    assert lm.prep.crop == 227 and lm.prep.image_size == (256, 256, 3)
    assert np.array_equal(lm.prep.mean, rgb)


def test_thousand_classes_get_imagenets_names(tmp_path):
    write_caffemodel(tmp_path / "net.caffemodel", _caffe_weights(classes=1000), v1=True)
    out = tmp_path / "m.safetensors"
    assert main(["convert", "caffe", str(tmp_path / "net.caffemodel"), "--out", str(out)]) == 0
    lm = load_model(out)
    assert lm.classes[0] == "n01440764" and lm.names[0] == "tench"
    card = (tmp_path / "m.safetensors.MODEL_CARD.md").read_text()
    assert "tench" not in card and "42.9%" not in card  # not bvlc_alexnet: no BVLC figures


def test_not_a_caffemodel_is_one_line(tmp_path, capsys):
    (tmp_path / "x.caffemodel").write_bytes(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff")
    assert main(["convert", "caffe", str(tmp_path / "x.caffemodel")]) == 2
    err = capsys.readouterr().err
    assert "not a Caffe model" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "t.caffemodel").write_text("name: 'AlexNet'\n")  # a prototxt, not weights
    assert main(["convert", "caffe", str(tmp_path / "t.caffemodel")]) == 2
    assert "not a Caffe model" in capsys.readouterr().err


def test_a_layer_that_does_not_fit_names_it_and_both_shapes(tmp_path, capsys):
    w = _caffe_weights()
    w["fc6.weight"] = w["fc6.weight"][:, :100]  # fc6 expects 256 * 6 * 6 * width inputs
    write_caffemodel(tmp_path / "bad.caffemodel", w, v1=False)
    assert main(["convert", "caffe", str(tmp_path / "bad.caffemodel"),
                 "--out", str(tmp_path / "b.safetensors")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "layer 'fc6' (fc6.weight) has shape (32, 100)" in err and "(32, 2304)" in err
    assert not (tmp_path / "b.safetensors").exists()


def test_a_net_of_another_layout_is_refused(tmp_path, capsys):
    """Same tensor shapes, another function: CaffeNet's pooling before LRN, or conv1 with
    padding (a 224 px net). Converting either would compute something else silently."""
    w = _caffe_weights()
    write_caffemodel(tmp_path / "caffenet.caffemodel", w, v1=False, caffenet=True)
    assert main(["convert", "caffe", str(tmp_path / "caffenet.caffemodel")]) == 2
    assert "layer 'pool1' is Pooling where AlexNet has LRN" in capsys.readouterr().err
    padded = {**CONVS, "conv1": (4, 2, 1)}
    write_caffemodel(tmp_path / "pad.caffemodel", w, v1=True, convs=padded)
    assert main(["convert", "caffe", str(tmp_path / "pad.caffemodel")]) == 2
    assert "convolution 'conv1' has kernel/stride/pad (11, 4, 2)" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.safetensors"))


def test_convert_never_replaces_a_file_silently(tmp_path, capsys):
    write_caffemodel(tmp_path / "net.caffemodel", _caffe_weights(), v1=False)
    out = tmp_path / "net.safetensors"  # the default: beside the model, same name
    assert main(["convert", "caffe", str(tmp_path / "net.caffemodel")]) == 0
    assert out.is_file() and (tmp_path / "net.safetensors.MODEL_CARD.md").is_file()
    stamp = out.stat().st_mtime_ns
    assert main(["convert", "caffe", str(tmp_path / "net.caffemodel")]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert out.stat().st_mtime_ns == stamp  # untouched
    assert main(["convert", "caffe", str(tmp_path / "net.caffemodel"), "--force"]) == 0
    assert out.stat().st_mtime_ns != stamp


def test_converted_weights_load_everywhere(tmp_path):
    """The converted file is an ordinary export: hub and ONNX take it."""
    from pathlib import Path

    write_caffemodel(tmp_path / "net.caffemodel", _caffe_weights(), v1=True)
    out = tmp_path / "c.safetensors"
    assert main(["convert", "caffe", str(tmp_path / "net.caffemodel"), "--out", str(out)]) == 0
    root = str(Path(__file__).resolve().parents[1])
    model = torch.hub.load(root, "paper", source="local", weights=str(out))
    assert model.cfg.input_size == 227
    meta = json.loads(
        __import__("safetensors").safe_open(str(out), framework="pt").metadata()["card"]
    )
    assert meta["model"]["variant"] == "paper"
