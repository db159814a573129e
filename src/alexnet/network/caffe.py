"""Caffe's ``bvlc_alexnet`` (and nets of its shape) into the ``paper`` network.

A ``.caffemodel`` is a protobuf ``NetParameter``; this module reads its wire format directly
(no protobuf package): the layers, in the current ``layer`` (field 100) or the V1
``layers`` (field 2) format, with their blobs and the convolution and LRN settings. Then
the five convolutions and three inner products become ``conv1``..``fc8``.

What Caffe's network differs in, made explicit as settings of ours (nothing is
approximated):

- input 227 px without conv1 padding (``input_size=227``), crops of 256x256 images;
- BGR input: conv1's three input channels are reordered to RGB, which computes exactly the
  same function on RGB images (the mean image is reordered with them);
- LRN ``k = 1`` across all maps of a layer, not per tower (``lrn_k``,
  ``lrn_across_towers``); Caffe's alpha is per window like ours ("mean");
- dropout scales in training, so the test-time network has no 0.5 factor
  (``dropout_form=inverted``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class CaffeError(ValueError):
    """A file that is not a usable Caffe model, in one line."""


# --------------------------------------------------------------------------------------
# Protobuf wire format


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf):
            raise CaffeError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise CaffeError("malformed varint")


def _fields(buf: memoryview) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of one message: ints for varints, memoryviews
    for length-delimited and fixed-width fields."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise CaffeError("field number 0")
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        elif wire == 2:
            length, i = _varint(buf, i)
            value, i = buf[i : i + length], i + length
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        else:
            raise CaffeError(f"unsupported wire type {wire}")
        if i > n:
            raise CaffeError("truncated message")
        yield number, wire, value


def _floats(wire: int, value: Any, dtype: str = "<f4") -> np.ndarray:
    if wire == 2:  # packed
        return np.frombuffer(value, dtype=dtype)
    return np.frombuffer(bytes(value), dtype=dtype)  # one unpacked element


def _ints(wire: int, value: Any) -> list[int]:
    if wire == 0:
        return [value]
    out, i = [], 0
    while i < len(value):
        v, i = _varint(value, i)
        out.append(v)
    return out


# --------------------------------------------------------------------------------------
# Caffe messages


@dataclass
class Blob:
    shape: tuple[int, ...]
    data: np.ndarray  # float32, flat


@dataclass
class Layer:
    name: str
    type: str  # the current format's type names: "Convolution", "InnerProduct", "LRN", ...
    blobs: list[Blob] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)


# V1LayerParameter.LayerType values -> type names
_V1_TYPES = {4: "Convolution", 14: "InnerProduct", 15: "LRN", 17: "Pooling", 18: "ReLU",
             6: "Dropout", 20: "Softmax", 21: "SoftmaxWithLoss", 5: "Data", 1: "Accuracy",
             3: "Concat", 22: "Split", 8: "Flatten", 23: "TanH"}  # fmt: skip


def _blob(buf: memoryview) -> Blob:
    legacy = [0, 0, 0, 0]  # num, channels, height, width
    shape: list[int] = []
    parts: list[np.ndarray] = []
    doubles: list[np.ndarray] = []
    for number, wire, value in _fields(buf):
        if 1 <= number <= 4 and wire == 0:
            legacy[number - 1] = value
        elif number == 5:
            parts.append(_floats(wire, value))
        elif number == 8:
            doubles.append(_floats(wire, value, "<f8"))
        elif number == 7 and wire == 2:  # BlobShape
            for n2, w2, v2 in _fields(value):
                if n2 == 1:
                    shape += _ints(w2, v2)
    data = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    if not parts and doubles:
        data = np.concatenate(doubles).astype(np.float32)
    dims = tuple(shape) if shape else tuple(d for d in legacy if d) or (data.size,)
    if int(np.prod(dims)) != data.size:
        raise CaffeError(f"a blob of shape {dims} holds {data.size} values")
    return Blob(dims, data.astype(np.float32, copy=False))


def _conv_params(buf: memoryview) -> dict[str, Any]:
    p: dict[str, Any] = {"group": 1, "stride": [1], "pad": [0], "kernel": []}
    for number, wire, value in _fields(buf):
        if number == 1:
            p["num_output"] = value
        elif number == 5:
            p["group"] = value
        elif number == 3:
            p["pad"] = _ints(wire, value)
        elif number == 4:
            p["kernel"] = _ints(wire, value)
        elif number == 6:
            p["stride"] = _ints(wire, value)
    return p


def _lrn_params(buf: memoryview) -> dict[str, Any]:
    p: dict[str, Any] = {"local_size": 5, "alpha": 1.0, "beta": 0.75, "k": 1.0, "region": 0}
    names = {1: "local_size", 2: "alpha", 3: "beta", 4: "region", 5: "k"}
    for number, wire, value in _fields(buf):
        if number in names:
            p[names[number]] = value if wire == 0 else struct.unpack("<f", value)[0]
    return p


def _pool_params(buf: memoryview) -> dict[str, Any]:
    p: dict[str, Any] = {"pool": 0, "pool_kernel": 0, "pool_stride": 1, "pool_pad": 0}
    names = {1: "pool", 2: "pool_kernel", 3: "pool_stride", 4: "pool_pad"}
    for number, wire, value in _fields(buf):
        if number in names and wire == 0:
            p[names[number]] = value
    return p


def _layer(buf: memoryview, v1: bool) -> Layer:
    layer = Layer(name="", type="")
    name_f, type_f, blobs_f = (4, 5, 6) if v1 else (1, 2, 7)
    conv_f, lrn_f, pool_f = (10, 18, 19) if v1 else (106, 118, 121)
    for number, wire, value in _fields(buf):
        if number == name_f and wire == 2:
            layer.name = bytes(value).decode("utf-8", "replace")
        elif number == type_f:
            layer.type = (
                _V1_TYPES.get(value, f"V1 type {value}")
                if v1
                else bytes(value).decode("utf-8", "replace")
            )
        elif number == blobs_f and wire == 2:
            layer.blobs.append(_blob(value))
        elif number == conv_f and wire == 2:
            layer.params.update(_conv_params(value))
        elif number == lrn_f and wire == 2:
            layer.params.update(_lrn_params(value))
        elif number == pool_f and wire == 2:
            layer.params.update(_pool_params(value))
    return layer


def read_caffemodel(path: str | Path) -> list[Layer]:
    """The layers of a ``.caffemodel`` (either format), in file order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Caffe model not found: {path}")
    buf = memoryview(path.read_bytes())
    layers: list[Layer] = []
    try:
        for number, wire, value in _fields(buf):
            if wire == 2 and number in (2, 100):
                layers.append(_layer(value, v1=number == 2))
    except CaffeError as err:
        raise CaffeError(f"{path}: not a Caffe model (NetParameter): {err}") from None
    if not any(layer.blobs for layer in layers):
        raise CaffeError(f"{path}: not a Caffe model with weights (no layer holds blobs)")
    return layers


def read_mean(path: str | Path) -> np.ndarray:
    """A ``.binaryproto`` mean (Caffe's BGR, (1, 3, H, W)) -> (H, W, 3) RGB float32."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mean file not found: {path}")
    try:
        blob = _blob(memoryview(path.read_bytes()))
    except CaffeError as err:
        raise CaffeError(f"{path}: not a Caffe mean (BlobProto): {err}") from None
    dims = [d for d in blob.shape if d != 1] if len(blob.shape) == 4 else list(blob.shape)
    if len(dims) != 3 or dims[0] != 3:
        raise CaffeError(f"{path}: a mean of shape {blob.shape}; expected (1, 3, H, W)")
    return np.ascontiguousarray(blob.data.reshape(dims)[::-1].transpose(1, 2, 0))


# The layer sequence of bvlc_alexnet (deploy.prototxt), ignoring data, dropout, softmax and
# accuracy layers: LRN after conv1's and conv2's ReLUs and before their pooling (CaffeNet,
# the other "AlexNet" of Caffe's zoo, pools first and is not this network).
_SEQUENCE = ["Convolution", "ReLU", "LRN", "Pooling", "Convolution", "ReLU", "LRN", "Pooling",
             "Convolution", "ReLU", "Convolution", "ReLU", "Convolution", "ReLU", "Pooling",
             "InnerProduct", "ReLU", "InnerProduct", "ReLU", "InnerProduct"]  # fmt: skip
_PASSIVE = {"Data", "Input", "Dropout", "Softmax", "SoftmaxWithLoss", "Accuracy", "Split",
            "Flatten", "Silence"}  # fmt: skip
# (kernel, stride, pad) of conv1..conv5 at 227 px
_CONV_GEOMETRY = [(11, 4, 0), (5, 1, 2), (3, 1, 1), (3, 1, 1), (3, 1, 1)]


def _check_structure(layers: list[Layer], has_lrn: bool, where: str) -> None:
    """The layer order, convolution geometry and pooling of bvlc_alexnet, or one line
    naming the first layer that differs."""
    expected = [t for t in _SEQUENCE if has_lrn or t != "LRN"]
    got = [layer for layer in layers if layer.type not in _PASSIVE]
    for i, want in enumerate(expected):
        if i >= len(got):
            raise CaffeError(f"{where}: the net ends where AlexNet has a {want} layer")
        if got[i].type != want:
            raise CaffeError(
                f"{where}: layer {got[i].name!r} is {got[i].type} where AlexNet has {want} "
                "(conv1/conv2: convolution, ReLU, LRN, pooling; CaffeNet pools before LRN and "
                "is another network)"
            )
    if len(got) > len(expected):
        extra = got[len(expected)]
        raise CaffeError(f"{where}: layer {extra.name!r} ({extra.type}) after AlexNet's fc8")
    convs = [layer for layer in got if layer.type == "Convolution"]
    for layer, (kernel, stride, pad) in zip(convs, _CONV_GEOMETRY, strict=True):
        p = layer.params
        have = ((p.get("kernel") or [0])[0], (p.get("stride") or [1])[0], (p.get("pad") or [0])[0])
        if have != (kernel, stride, pad):
            raise CaffeError(
                f"{where}: convolution {layer.name!r} has kernel/stride/pad {have}; AlexNet's "
                f"(227 px input) is {(kernel, stride, pad)}"
            )
    for layer in (x for x in got if x.type == "Pooling"):
        p = layer.params
        if (p.get("pool", 0), p.get("pool_kernel"), p.get("pool_stride"), p.get("pool_pad", 0)) != (
            0,
            3,
            2,
            0,
        ):
            raise CaffeError(
                f"{where}: pooling {layer.name!r} is not AlexNet's overlapping max pooling "
                "(MAX, kernel 3, stride 2)"
            )


# ILSVRC-2012's per-channel means in Caffe's BGR order (Caffe's own "mean_value").
CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)


# --------------------------------------------------------------------------------------
# Into our network


def to_paper(
    layers: list[Layer], where: str
) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, str]]:
    """Our ``paper`` network's tensors (by our layer names), its model settings, and which
    Caffe layer each of ours came from. A net that is not AlexNet-shaped is a CaffeError
    naming the layer; whether every shape fits is checked when the tensors are loaded into
    the model built from the settings."""
    convs = [layer for layer in layers if layer.type == "Convolution"]
    fcs = [layer for layer in layers if layer.type == "InnerProduct"]
    lrns = [layer for layer in layers if layer.type == "LRN"]
    if len(convs) != 5 or len(fcs) != 3:
        raise CaffeError(
            f"{where}: {len(convs)} convolution and {len(fcs)} inner-product layers; AlexNet "
            "has 5 and 3"
        )
    _check_structure(layers, bool(lrns), where)
    state: dict[str, np.ndarray] = {}
    names: dict[str, str] = {}
    for ours, layer in zip(
        ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"], convs + fcs, strict=True
    ):
        if len(layer.blobs) != 2:
            raise CaffeError(
                f"{where}: layer {layer.name!r} ({ours}) has {len(layer.blobs)} blobs; "
                "expected weights and biases"
            )
        w, b = layer.blobs
        if ours.startswith("fc"):  # V1 stores (1, 1, out, in)
            dims = [d for d in w.shape if d != 1] or [1]
            weight = w.data.reshape(dims[-2], -1) if len(dims) >= 2 else w.data.reshape(1, -1)
        else:
            weight = w.data.reshape(w.shape[-4:] if len(w.shape) >= 4 else w.shape)
        state[f"{ours}.weight"] = weight
        state[f"{ours}.bias"] = b.data.reshape(-1)
        names[ours] = layer.name
    if state["conv1.weight"].ndim != 4 or state["conv1.weight"].shape[1] != 3:
        raise CaffeError(
            f"{where}: layer {names['conv1']!r} takes {state['conv1.weight'].shape[1:2]} input "
            "channels; the converter reads 3-channel (BGR) networks"
        )
    # BGR -> RGB: the same function on reordered input channels.
    state["conv1.weight"] = np.ascontiguousarray(state["conv1.weight"][:, ::-1])
    conv1_out = state["conv1.weight"].shape[0]
    width = conv1_out / 96
    groups = [c.params.get("group", 1) for c in convs]
    if groups != [1, 2, 1, 2, 2] and groups != [1] * 5:
        raise CaffeError(f"{where}: convolution groups {groups}; AlexNet's are [1, 2, 1, 2, 2]")
    k = 2.0
    if lrns:
        p = lrns[0].params
        for layer in lrns:
            if not np.isclose(layer.params["k"], p["k"]):
                raise CaffeError(
                    f"{where}: LRN layers {lrns[0].name!r} and {layer.name!r} have k "
                    f"{p['k']:g} and {layer.params['k']:g}; the network takes one k"
                )
            q = layer.params
            if (
                (q["local_size"], q["region"]) != (5, 0)
                or not np.isclose(q["alpha"], 1e-4)
                or not np.isclose(q["beta"], 0.75)
            ):
                raise CaffeError(
                    f"{where}: LRN layer {layer.name!r} has local_size {q['local_size']}, alpha "
                    f"{q['alpha']:g}, beta {q['beta']:g}; the paper's network takes 5, 1e-4, 0.75 "
                    "across channels"
                )
        k = float(p["k"])
    settings = {
        "variant": "paper",
        "num_classes": int(state["fc8.weight"].shape[0]),
        "in_channels": int(state["conv1.weight"].shape[1]),
        "input_size": 227,
        "width": width,
        "fc_width": int(state["fc6.weight"].shape[0]),
        "towers": 2 if groups[1] == 2 else 1,
        "norm": "lrn" if lrns else "none",
        "lrn_k": k,
        "lrn_across_towers": True,
        "dropout_form": "inverted",
        "init": "torch",
    }
    return state, settings, names
