import csv
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
import yaml

from alexnet.apps.evaluate import run_evaluation
from alexnet.apps.retrieval import nearest
from alexnet.cli import main
from alexnet.data.dataset import Prepared, make_loader
from alexnet.data.prepare import prepare
from alexnet.data.sources import DataError
from alexnet.engine.checkpoint import load_weights
from alexnet.engine.inference import images_to_inputs, load_model
from alexnet.engine.metrics import model_outputs, view_probabilities
from alexnet.network.convert import to_torchvision_state_dict
from alexnet.network.fourier import Conv2d
from alexnet.network.model import build_model
from helpers import make_folder_dataset, photo


@pytest.fixture
def run(trained_run):
    return trained_run


def test_evaluate_counts_and_agrees_with_training(run):
    r = run_evaluation([str(run / "run" / "checkpoint.pt")], str(run / "data"), progress=False)
    summary = json.loads((run / "run" / "summary.json").read_text())
    assert r["images"] == r["dataset_images"] == 30
    assert r["top1_error"] == pytest.approx(summary["final_val_top1_error"])
    assert sum(c["images"] for c in r["per_class"]) == 30
    assert r["top1_accuracy"] == pytest.approx(1 - r["top1_error"])


def test_safetensors_export_evaluates_the_same(run):
    a = run_evaluation([str(run / "run" / "checkpoint.pt")], str(run / "data"), progress=False)
    b = run_evaluation([str(run / "run" / "model.safetensors")], str(run / "data"), progress=False)
    assert a["top1_error"] == b["top1_error"] and a["loss"] == pytest.approx(b["loss"])


def test_evaluate_in_bf16_and_a_precision_that_cannot_run(run, capsys):
    args = ([str(run / "run" / "checkpoint.pt")], str(run / "data"))
    a = run_evaluation(*args, progress=False)
    b = run_evaluation(*args, progress=False, precision="bf16")
    assert (a["precision"], b["precision"]) == ("fp32", "bf16")
    # bf16 really ran (the loss moved) and stayed within bf16's rounding of fp32's.
    assert b["loss"] != a["loss"] and b["loss"] == pytest.approx(a["loss"], rel=2**-4)
    weights = str(run / "run" / "checkpoint.pt")
    cmd = [
        "evaluate",
        weights,
        "--data",
        str(run / "data"),
        "--precision",
        "fp16",
        "--device",
        "cpu",
    ]
    assert main(cmd) == 2
    assert "--precision=fp16 cannot run on cpu" in capsys.readouterr().err


def test_ensemble_of_identical_checkpoints_equals_one(run):
    ck = str(run / "run" / "checkpoint.pt")
    one = run_evaluation([ck], str(run / "data"), progress=False)
    two = run_evaluation([ck, ck], str(run / "data"), progress=False)
    assert (
        two["ensemble"]
        and one["top1_error"] == two["top1_error"]
        and one["loss"] == pytest.approx(two["loss"], rel=1e-6)
    )


def test_ten_crop_is_the_average_of_the_ten_views():
    torch.manual_seed(0)
    m = build_model(variant="small", num_classes=5, input_size=24).eval()
    x = torch.randn(2, 3, 32, 32)
    from alexnet.data import transforms as T

    views = T.ten_crop(x.permute(0, 2, 3, 1), 24).permute(0, 1, 4, 2, 3)
    got = view_probabilities([m], views)
    manual = torch.zeros(2, 5)
    for top, left, flip in T.ten_crop_offsets(32, 32, 24):
        v = x[:, :, top : top + 24, left : left + 24]
        manual += m(v.flip(-1) if flip else v).softmax(-1) / 10
    assert torch.allclose(got, manual, atol=1e-6)


def test_distributed_evaluation_counts_each_image_once(run, cli_env):
    ck = str(run / "run" / "checkpoint.pt")
    cmd = [
        "-m",
        "alexnet",
        "evaluate",
        ck,
        "--data",
        str(run / "data"),
        "--batch-size",
        "8",
        "--quiet",
        "--workers",
        "0",
    ]
    single = subprocess.run(
        [sys.executable, *cmd, "--json", str(run / "one.json")],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          *cmd, "--json", str(run / "two.json")], env=cli_env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = (json.loads((run / f).read_text()) for f in ("one.json", "two.json"))
    assert a["images"] == b["images"] == 30  # 30 images over 2 ranks: no padded duplicates
    assert b["world_size"] == 2
    assert a["top1_error"] == b["top1_error"] and a["top5_error"] == b["top5_error"]
    assert [c["images"] for c in a["per_class"]] == [c["images"] for c in b["per_class"]]


def test_evaluate_json_and_csv(run, tmp_path, capsys):
    ck = str(run / "run" / "checkpoint.pt")
    assert (
        main(
            [
                "evaluate",
                ck,
                "--data",
                str(run / "data"),
                "--json",
                str(tmp_path / "r.json"),
                "--csv",
                str(tmp_path / "r.csv"),
                "--quiet",
            ]
        )
        == 0
    )
    r = json.loads((tmp_path / "r.json").read_text())
    for key in (
        "top1_error",
        "top5_error",
        "images",
        "models",
        "views",
        "data",
        "per_class",
        "confused_pairs",
    ):
        assert key in r
    assert (tmp_path / "r.csv").read_text().count("\n") == 10 + 3


def test_predict_directory_with_a_corrupt_file(run, tmp_path, capsys):
    d = tmp_path / "imgs"
    d.mkdir()
    images = np.load(run / "data" / "val.images.npy")[:3]
    from PIL import Image

    for i, a in enumerate(images):
        Image.fromarray(a[..., 0]).save(d / f"ok{i}.png")
    (d / "bad.png").write_bytes(b"\x89PNG not really")
    code = main(
        [
            "predict",
            str(run / "run" / "model.safetensors"),
            str(d),
            "--json",
            str(tmp_path / "p.json"),
            "--top-k",
            "3",
        ]
    )
    assert code == 1
    out = json.loads((tmp_path / "p.json").read_text())
    assert len(out) == 4
    bad = [r for r in out if "error" in r]
    assert len(bad) == 1 and bad[0]["path"].endswith("bad.png")
    good = sorted((r for r in out if "predictions" in r), key=lambda r: r["path"])
    # The PNGs hold the prepared val images: predict's decoding must give the evaluation
    # loader's probabilities for them.
    lm = load_model(run / "run" / "model.safetensors")
    loader = make_loader(
        Prepared(run / "data"), "val", lm.loader_spec(), 3, torch.device("cpu"), lm.prep, workers=0
    )
    expected = next(model_outputs(lm.model, loader.batches(), torch.device("cpu")))[0]
    for r, p in zip(good, expected, strict=True):
        assert len(r["predictions"]) == 3
        top = p.topk(3)
        assert [q["index"] for q in r["predictions"]] == top.indices.tolist()
        got = torch.tensor([q["probability"] for q in r["predictions"]])
        assert torch.allclose(got, top.values, atol=1e-5)
        assert r["predictions"][0]["name"] in Prepared(run / "data").names
    assert "could not be read" in capsys.readouterr().err


def test_predict_matches_the_evaluation_pipeline(run):
    """A stored test image predicted from a PNG file gets the evaluation's probabilities."""
    lm = load_model(run / "run" / "model.safetensors")
    arr = np.load(run / "data" / "val.images.npy")[:2]
    x = images_to_inputs(list(arr), lm)
    from alexnet.data.dataset import make_loader

    loader = make_loader(
        Prepared(run / "data"), "val", lm.loader_spec(), 2, torch.device("cpu"), lm.prep, workers=0
    )
    x_eval, _ = next(iter(loader))
    assert torch.allclose(x, x_eval, atol=1e-5)


def test_features_and_neighbours_against_numpy(run, tmp_path, capsys):
    assert main(["features", str(run / "run" / "checkpoint.pt"), "--data", str(run / "data"), "--split", "val",
                 "--out", str(tmp_path / "f.npz"), "--dtype", "float32", "--quiet"]) == 0  # fmt: skip
    z = np.load(tmp_path / "f.npz")
    assert (
        z["features"].shape == (30, 64)
        and len(z["ids"]) == 30
        and list(z["labels"]) == list(np.arange(30) % 10)
    )
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(500, 16)).astype(np.float16)
    queries = torch.from_numpy(rng.normal(size=(7, 16)).astype(np.float32))
    d, i = nearest(queries, gallery, k=6, gallery_chunk=64, query_chunk=3)
    brute = np.linalg.norm(queries.numpy()[:, None, :] - gallery.astype(np.float32)[None], axis=2)
    expect = np.argsort(brute, axis=1)[:, :6]
    assert np.array_equal(i.numpy(), expect)
    assert np.allclose(d.numpy(), np.take_along_axis(brute, expect, 1), atol=1e-3)
    _, i_self = nearest(
        torch.from_numpy(gallery[:5].astype(np.float32)), gallery, k=3, exclude_self=True
    )
    assert all(q not in row for q, row in enumerate(i_self.tolist()))
    # Features of other weights, or k beyond the gallery: errors naming what is wrong.
    other = dict(z)
    other["model"] = np.array("other.safetensors")
    np.savez(tmp_path / "o.npz", **other)
    assert (
        main(
            ["neighbors", "--gallery", str(tmp_path / "f.npz"), "--query", str(tmp_path / "o.npz")]
        )
        == 2
    )
    assert main(["neighbors", "--gallery", str(tmp_path / "f.npz"), "-k", "30"]) == 2
    with pytest.raises(SystemExit):
        main(["neighbors", "--gallery", str(tmp_path / "f.npz"), "-k", "0"])
    assert (
        main(["neighbors", "--gallery", str(tmp_path / "f.npz"), "-k", "29", "--limit", "1"]) == 0
    )
    err = capsys.readouterr().err
    assert "features of other.safetensors" in err and "-k 30: choose 1 to 29" in err


def test_torchvision_weights_round_trip(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.alexnet().eval()
    torch.save(tv.state_dict(), tmp_path / "alexnet-owt-test.pth")
    lm = load_model(tmp_path / "alexnet-owt-test.pth")
    assert (
        lm.model.cfg.variant == "owt"
        and lm.prep.normalize == "torchvision"
        and lm.names[0] == "tench"
    )
    x = torch.randn(2, 3, 224, 224)
    ours, ref = lm.model(x), tv(x)
    # conv2-conv5 run in the Fourier domain by default: the same to float32 rounding ...
    assert ((ours - ref).norm() / ref.norm()).item() < 1e-5
    # ... and with PyTorch's kernels, the same bits.
    for m in lm.model.modules():
        if isinstance(m, Conv2d):
            m.impl = "direct"
    assert torch.equal(lm.model(x), ref)
    # Export to safetensors and back, then into torchvision again.
    assert (
        main(["export", str(tmp_path / "alexnet-owt-test.pth"), str(tmp_path / "w.safetensors")])
        == 0
    )
    state, meta = load_weights(tmp_path / "w.safetensors")
    assert meta["model_config"]["variant"] == "owt" and meta["names"][0] == "tench"
    tv2 = torchvision.models.alexnet().eval()
    tv2.load_state_dict(to_torchvision_state_dict(state), strict=True)
    assert torch.equal(tv2(x), tv(x))


def test_torchvision_weights_on_prepared_images(tmp_path):
    """owt weights on our 256 px prepared data use torchvision's normalisation."""
    torch.manual_seed(0)
    tv = torchvision.models.alexnet(num_classes=3).eval()
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    make_folder_dataset(tmp_path / "src", classes=3, per_class=3, size=(300, 280))
    prepare(str(tmp_path / "src"), tmp_path / "data", workers=1, val_fraction=0.34, progress=False)
    r = run_evaluation([str(tmp_path / "tv.pth")], str(tmp_path / "data"), progress=False)
    assert r["images"] == 3
    # Same numbers by hand: resize-256 + centre 224 (our stored crop, then its centre), ToTensor, Normalize.
    data = Prepared(tmp_path / "data")
    img = torch.from_numpy(data.split("val").image(0)).float() / 255
    x = ((img - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225]))[
        16:240, 16:240
    ].permute(2, 0, 1)
    p_manual = tv(x[None]).softmax(-1)
    lm = load_model(tmp_path / "tv.pth")
    p_ours = view_probabilities([lm.model], images_to_inputs([data.split("val").image(0)], lm))
    assert torch.allclose(p_manual, p_ours, atol=1e-5)


def test_bad_weights_file(tmp_path, capsys):
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert main(["predict", str(tmp_path / "junk.pt"), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a weights file" in err and "weights_only" not in err
    (tmp_path / "zip.pt").write_bytes(b"PK\x03\x04 not really a zip")
    assert main(["predict", str(tmp_path / "zip.pt"), str(tmp_path)]) == 2
    assert "not a loadable checkpoint" in capsys.readouterr().err
    photo(10, 10, 0).save(tmp_path / "a.png")
    from safetensors.torch import save_file

    save_file(
        {"w": torch.zeros(1)}, str(tmp_path / "x.safetensors"), metadata={"model_config": "{}"}
    )
    assert main(["predict", str(tmp_path / "x.safetensors"), str(tmp_path / "a.png")]) == 2
    # A pickle named .safetensors: one line, not the reader's traceback.
    torch.save({"w": torch.zeros(1)}, tmp_path / "p.safetensors")
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "p.safetensors"), str(tmp_path / "a.png")]) == 2
    assert "not a readable safetensors file" in capsys.readouterr().err


def test_ten_crop_of_the_whole_image_keeps_the_average():
    from alexnet.data import transforms as T

    torch.manual_seed(0)
    m = build_model(variant="small", num_classes=5, input_size=28, in_channels=1).eval()
    x = torch.randn(3, 28, 28, 1)
    views = T.ten_crop(x, 28)
    assert views.shape[0] == 2
    ten = torch.stack([x] * 5 + [x.flip(2)] * 5).permute(0, 1, 4, 2, 3)
    assert torch.allclose(
        view_probabilities([m], views.permute(0, 1, 4, 2, 3)),
        view_probabilities([m], ten),
        atol=1e-6,
    )


def test_the_views_are_named_for_what_they_were():
    from alexnet.data.transforms import views_label
    from alexnet.engine.card import render_card

    assert views_label("center", (32, 32), 32) == "centre crop"
    assert (
        views_label("ten-crop", (32, 32), 32)
        == "10 views = the whole image and its mirror, averaged"
    )
    assert views_label("ten-crop", (256, 256), 224).startswith("10 views (4 corners, centre")
    assert views_label("ten-crop", None, 224) == "10 views averaged"  # size unknown
    card = {"model": {"variant": "small", "parameters": 1, "classes": 10, "input": "32x32x3 crops",
                      "image_size": [32, 32, 3], "crop": 32},
            "results": {"val_views": "ten-crop", "best_val_top1_error": 0.1, "best_epoch": 3}}  # fmt: skip
    assert "(10 views = the whole image and its mirror, averaged" in render_card(
        card, "m.safetensors"
    )


def test_demo_flow_on_tiny_data(run, tmp_path, capsys):
    from alexnet.apps import demo

    assert (
        demo.run(
            str(tmp_path / "demo"),
            str(run / "data"),
            epochs=1,
            overrides=[
                "run.batch_size=16",
                "run.precision=fp32",
                "model.conv_impl=direct",
                "run.threads=2",
            ],
        )
        == 0
    )
    out = capsys.readouterr().out
    assert (
        "10 views = the whole image and its mirror, averaged: accuracy" in out and "report:" in out
    )
    result = json.loads((tmp_path / "demo" / "test.json").read_text())
    assert result["test_images"] == 30
    # The demo's test figures are what `alexnet evaluate` says of the same weights.
    for views, key in (("ten-crop", "test_top1_error"), ("center", "test_top1_error_center")):
        r = run_evaluation(
            [str(tmp_path / "demo" / "model.safetensors")], str(run / "data"), views=views,
            workers=0, device="cpu", progress=False,
        )  # fmt: skip
        assert result[key] == pytest.approx(r["top1_error"], abs=1e-9)
    assert result["test_accuracy"] == pytest.approx(1 - result["test_top1_error"])
    assert (tmp_path / "demo" / "report.html").is_file()


def test_checkpoint_export_and_cli_export_carry_the_same_preprocessing(run, tmp_path):
    # One export function: `alexnet export` of the checkpoint gives training's export back,
    # PCA, crop, scale and classes included.
    assert (
        main(["export", str(run / "run" / "checkpoint.pt"), str(tmp_path / "e.safetensors")]) == 0
    )
    paths = [
        run / "run" / "checkpoint.pt",
        run / "run" / "model.safetensors",
        tmp_path / "e.safetensors",
    ]
    preps = [load_model(p).prep for p in paths]
    for prep in preps[1:]:
        assert prep.meta() == preps[0].meta()
        assert prep.classes == preps[0].classes and prep.names == preps[0].names
        mine, ref = prep.tensors(), preps[0].tensors()
        assert set(mine) == set(ref) == {"mean_image", "eigenvalues", "eigenvectors"}
        assert all(torch.equal(mine[k], ref[k]) for k in ref)
    cfg = yaml.safe_load((run / "run" / "config.yaml").read_text())
    assert preps[0].crop == cfg["data"]["crop"] == 28
    assert preps[0].input_scale == cfg["data"]["input_scale"]
    # Weights files get the usual permissions (safetensors alone writes 0600) ...
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "e.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    # ... and an export must be a .safetensors file, or nothing could load it.
    assert main(["export", str(run / "run" / "checkpoint.pt"), str(tmp_path / "noext")]) == 2
    assert not (tmp_path / "noext").exists()
    state, _ = load_weights(tmp_path / "e.safetensors")
    ref_state, _ = load_weights(run / "run" / "model.safetensors")
    assert all(torch.equal(state[k], ref_state[k]) for k in ref_state)


def test_evaluating_on_data_of_another_size_names_both(run, tmp_path, capsys):
    make_folder_dataset(tmp_path / "img", classes=10, per_class=2, size=(40, 40))
    prepare(
        str(tmp_path / "img"), tmp_path / "p", size=32, workers=1, val_fraction=0.5, progress=False
    )
    code = main(["evaluate", str(run / "run" / "model.safetensors"), "--data", str(tmp_path / "p"),
                 "--workers", "0", "--device", "cpu"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "holds 3-channel images but the model takes 1" in err


def test_predict_decodes_files_as_prepare_stores_them(run, tmp_path, monkeypatch):
    # A 28 px grayscale model: a non-square photo is cut like `alexnet prepare --size 28`
    # (shorter side, central crop), and a decompression bomb is a per-file error.
    from PIL import Image

    from alexnet.data.images import image_to_array, load_image

    photo(90, 60, 3).save(tmp_path / "wide.jpg")
    arr = image_to_array(tmp_path / "wide.jpg", (28, 28, 1))
    rgb = load_image(tmp_path / "wide.jpg", 28)
    assert arr.shape == (28, 28, 1) and rgb.shape == (28, 28, 3)
    gray = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32)
    assert np.abs(arr[..., 0] - gray).mean() < 2  # the same crop, not a squashed image
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    code = main(["predict", str(run / "run" / "model.safetensors"), str(tmp_path / "wide.jpg"),
                 "--json", str(tmp_path / "p.json")])  # fmt: skip
    assert code == 1
    out = json.loads((tmp_path / "p.json").read_text())
    assert "decompression bomb" in out[0]["error"]


def test_nan_weights_are_an_error_not_an_error_rate(run, tmp_path, capsys):
    _, meta = load_weights(run / "run" / "model.safetensors")
    lm = load_model(run / "run" / "model.safetensors")
    with torch.no_grad():
        lm.model.fc8.weight.fill_(float("nan"))
    from alexnet.engine.checkpoint import export_weights

    export_weights(
        tmp_path / "nan.safetensors", lm.model.state_dict(), meta["model_config"], lm.prep
    )
    code = main(["evaluate", str(tmp_path / "nan.safetensors"), "--data", str(run / "data"),
                 "--workers", "0", "--device", "cpu"])  # fmt: skip
    assert code == 2 and "not finite" in capsys.readouterr().err


def test_allow_mismatch_is_the_explicit_override_for_transfer(run, tmp_path, capsys):
    # Other class names: refused by evaluate and features; --allow-mismatch compares labels
    # by index and says so.
    shutil.copytree(run / "data", tmp_path / "renamed")
    meta_path = tmp_path / "renamed" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["classes"] = meta["names"] = [f"other_{c}" for c in meta["classes"]]
    meta_path.write_text(json.dumps(meta))
    weights = str(run / "run" / "model.safetensors")
    base = ["--data", str(tmp_path / "renamed"), "--workers", "0", "--device", "cpu"]
    assert main(["evaluate", weights, *base]) == 2
    assert "first differ at index 0" in capsys.readouterr().err
    out = tmp_path / "f.npz"
    assert main(["features", weights, *base, "--split", "val", "--out", str(out)]) == 2
    assert not out.exists()
    capsys.readouterr()
    assert (
        main(["evaluate", weights, *base, "--allow-mismatch", "--json", str(tmp_path / "e.json")])
        == 0
    )
    captured = capsys.readouterr()
    assert "labels are compared by index" in captured.err + captured.out
    ref = run_evaluation([weights], str(run / "data"), progress=False)
    assert json.loads((tmp_path / "e.json").read_text())["top1_error"] == ref["top1_error"]
    assert (
        main(["features", weights, *base, "--split", "val", "--out", str(out), "--allow-mismatch"])
        == 0
    )
    assert out.exists()
    # fc7 does not depend on the labels: features take any class list with the override.
    meta["classes"] = meta["names"] = meta["classes"][:7]
    meta_path.write_text(json.dumps(meta))
    feats = ["features", weights, *base, "--split", "val", "--out", str(out), "--allow-mismatch"]
    before = out.read_bytes()
    assert main(feats) == 2  # as export: an existing file is replaced only with --force
    assert f"{out} exists; pass --force" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main([*feats, "--force"]) == 0


def test_allow_mismatch_adapts_the_mean_to_another_size_and_never_the_channels(run):
    from alexnet.data.preprocess import InputTransform

    prep = load_model(run / "run" / "model.safetensors").prep
    with pytest.raises(DataError, match="36x36x1"):
        prep.for_data((36, 36, 1), None, "d")
    adapted, notes = prep.for_data((36, 36, 1), None, "d", allow_mismatch=True)
    assert adapted.image_size == (36, 36, 1) and len(notes) == 1 and "per-channel" in notes[0]
    assert adapted.mean is not None
    np.testing.assert_allclose(
        adapted.mean, prep.mean.mean(axis=(0, 1)) + 0 * adapted.mean, rtol=1e-6
    )
    x = torch.full((2, 36, 36, 1), 100, dtype=torch.uint8)
    inputs = InputTransform(adapted, torch.device("cpu"))(x)
    assert inputs.shape == (2, 1, prep.crop, prep.crop)
    expected = (100 - float(prep.mean.mean())) * prep.input_scale
    assert torch.allclose(inputs, torch.full_like(inputs, expected), rtol=1e-5)
    # Same size and classes: nothing changes, no notes.
    assert prep.for_data(prep.image_size, list(prep.classes), "d", True) == (prep, [])
    for allow in (False, True):  # channels first, and no advice that cannot work
        with pytest.raises(DataError, match="3-channel images but the model takes 1") as info:
            prep.for_data((36, 36, 3), None, "d", allow_mismatch=allow)
        assert "--size" not in str(info.value) and "--allow-mismatch" not in str(info.value)
    # The class count is the blocker named, not the size; names moved to other indices
    # would be scored wrong, so even the override refuses them.
    names = list(prep.classes)
    with pytest.raises(DataError, match="has 9 classes and the model 10") as info:
        prep.for_data((36, 36, 1), names[:9], "d", allow_mismatch=True)
    assert "--allow-mismatch" not in str(info.value)
    swapped = [names[1], names[0], *names[2:]]
    with pytest.raises(DataError, match="at other indices"):
        prep.for_data((36, 36, 1), swapped, "d", allow_mismatch=True)


def test_ensemble_members_each_use_their_own_mean_image(run, tmp_path):
    # A second model identical but for its mean image (+20 grey levels): each member is fed
    # its own preprocessing, so the ensemble is the average of what each would give alone.
    import dataclasses

    from alexnet.engine.checkpoint import export_weights

    _, meta = load_weights(run / "run" / "model.safetensors")
    lm = load_model(run / "run" / "model.safetensors")
    shifted = dataclasses.replace(lm.prep, mean=lm.prep.mean + 20)
    other = tmp_path / "shifted.safetensors"
    export_weights(other, lm.model.state_dict(), meta["model_config"], shifted)
    paths = [run / "run" / "model.safetensors", other]
    data = Prepared(run / "data")
    probs = []
    for p in paths:
        m = load_model(p)
        loader = make_loader(
            data, "val", m.loader_spec(), 8, torch.device("cpu"), m.prep, workers=0
        )
        probs.append(
            torch.cat([o for o, _ in model_outputs(m.model, loader.batches(), torch.device("cpu"))])
        )
    assert not torch.allclose(probs[0], probs[1])  # the mean image matters
    labels = torch.from_numpy(data.split("val").labels)
    expected = -torch.log(((probs[0] + probs[1]) / 2).gather(1, labels.view(-1, 1))).mean()
    r = run_evaluation([str(p) for p in paths], str(run / "data"), progress=False)
    assert r["loss"] == pytest.approx(expected.item(), rel=1e-5)


def test_an_empty_split_is_an_error_not_100_percent(run, tmp_path, capsys):
    from helpers import make_fashion_mnist

    make_fashion_mnist(tmp_path / "raw", n_train=16, n_val=0)
    prepare(str(tmp_path / "raw"), tmp_path / "p", progress=False)
    weights = str(run / "run" / "model.safetensors")
    code = main(
        ["evaluate", weights, "--data", str(tmp_path / "p"), "--workers", "0", "--device", "cpu"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "no images in its val split" in err, err


def test_json_dash_is_standard_output_alone(run, tmp_path, capsys, monkeypatch):
    # `--json -` pipes: stdout holds only the JSON (the table goes to stderr), no file "-".
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    a = np.load(run / "data" / "val.images.npy")[0]
    Image.fromarray(a[..., 0]).save(tmp_path / "one.png")
    model = str(run / "run" / "model.safetensors")
    assert main(["predict", model, str(tmp_path / "one.png"), "--json", "-"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)[0]["path"].endswith("one.png")
    assert "one.png" in out.err  # the table
    assert main(["evaluate", model, "--data", str(run / "data"), "--json", "-", "--quiet"]) == 0
    assert "top1_error" in json.loads(capsys.readouterr().out)
    assert not (tmp_path / "-").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["predict", "w.pt", "x.png", "--batch-size", "-1"], "--batch-size: must be >= 1"),
        (["predict", "w.pt", "x.png", "--batch-size", "0"], "--batch-size: must be >= 1"),
        (["evaluate", "w.pt", "--data", "d", "--batch-size", "0"], "--batch-size: must be >= 1"),
        (
            ["features", "w.pt", "--data", "d", "--out", "f.npz", "--batch-size", "0"],
            "must be >= 1",
        ),
        (
            ["evaluate", "w.pt", "--data", "d", "--device", "tpu"],
            "choose auto, cpu, cuda or cuda:N",
        ),
        (["predict", "w.pt", "x.png", "--device", "foo"], "choose auto, cpu, cuda or cuda:N"),
        (["features", "w.pt", "--data", "d", "--out", "f.npz", "--device", "gpu"], "cuda:N"),
        (["neighbors", "--gallery", "g.npz", "--device", "cuda:x"], "cuda:N"),
        (["neighbors", "--gallery", "g.npz", "--limit", "0"], "--limit: must be >= 1"),
        (["info", "--device", "tpu"], "choose auto, cpu, cuda or cuda:N"),
    ],
)
def test_bad_batch_sizes_and_devices_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_a_gallery_that_is_not_a_features_file(tmp_path, capsys):
    np.save(tmp_path / "a.npy", np.zeros(3))
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    (tmp_path / "t.txt").write_text("hi")
    for name in ("a.npy", "other.npz", "t.txt"):
        assert main(["neighbors", "--gallery", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert f"{name} is not a features file" in err and "allow_pickle" not in err


def test_features_out_that_is_a_folder_is_refused_before_the_work(run, tmp_path, capsys):
    (tmp_path / "feats").mkdir()
    argv = ["features", str(run / "run" / "model.safetensors"), "--data", str(run / "data")]
    assert main([*argv, "--out", str(tmp_path / "feats")]) == 2
    assert "is a folder; give a file such as" in capsys.readouterr().err
    assert list((tmp_path / "feats").iterdir()) == []
    # Before the work: refused ahead of loading the weights, which here do not exist.
    missing = ["features", str(tmp_path / "missing.pt"), "--data", str(run / "data")]
    assert main([*missing, "--out", str(tmp_path / "feats")]) == 2
    assert "is a folder; give a file such as" in capsys.readouterr().err


def test_predict_quiet_still_names_the_unreadable_files(run, tmp_path, capsys):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    assert main(["predict", str(run / "run" / "model.safetensors"), str(tmp_path), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "bad.png" in err and "1 of 1 files could not be read (see above)" in err


def test_the_report_leaves_out_top5_where_five_guesses_cover_every_class(run):
    from alexnet.apps.evaluate import format_report

    r = run_evaluation([str(run / "run" / "checkpoint.pt")], str(run / "data"), progress=False)
    assert "top-5 error" in format_report(r)  # 10 classes
    five = {**r, "per_class": r["per_class"][:5]}
    text = format_report(five)
    assert "top-5 error" not in text and "no top-5 with 5 classes" in text


def test_predict_passes_over_hidden_files_as_prepare_does(tmp_path):
    from alexnet.apps.predict import collect_files

    photo(40, 30, seed=0).save(tmp_path / "a.jpg")
    (tmp_path / "._a.jpg").write_bytes(b"AppleDouble")  # macOS's resource fork beside a.jpg
    (tmp_path / ".thumbs").mkdir()
    photo(40, 30, seed=0).save(tmp_path / ".thumbs" / "t.jpg")
    (tmp_path / "sub").mkdir()
    photo(40, 30, seed=0).save(tmp_path / "sub" / "b.png")
    assert collect_files([str(tmp_path)]) == [tmp_path / "a.jpg", tmp_path / "sub" / "b.png"]
    # A file named on the command line is taken as given, hidden or not.
    assert collect_files([str(tmp_path / "._a.jpg")]) == [tmp_path / "._a.jpg"]


def test_cards_and_reports_leave_out_top5_for_five_classes_or_fewer():
    from alexnet.apps.report import headline
    from alexnet.engine.card import render_card

    results = {"weights_val_top1_error": 0.25, "weights_val_top5_error": 0.0, "weights_epoch": 2,
               "best_val_top1_error": 0.2, "best_val_top5_error": 0.0, "best_epoch": 1}  # fmt: skip
    for classes, shown in ((10, True), (3, False)):
        card = {"model": {"variant": "small", "parameters": 1, "classes": classes, "input": "x"},
                "results": results}  # fmt: skip
        text = render_card(card, "m.safetensors")
        assert ("top-1 / top-5 error 25.00% / 0.00%" in text) is shown
        assert ("validation top-1 error 25.00%" in text) is not shown
        assert ("Best validation epoch: 1, top-1 error 20.00%" in text) is not shown
        cfg = {"model": {"num_classes": classes}, "data": {"path": "d"}}
        summary = {"best_val_top1_error": 0.2, "best_val_top5_error": 0.0, "best_epoch": 1}
        facts = dict(headline(cfg, summary, {})["facts"])
        assert ("top-1 / top-5 error" in facts) is shown and ("top-1 error" in facts) is not shown


def test_predict_csv_to_stdout_quiet_escaped_names_and_broken_links(run, tmp_path, capsys):
    # --csv - is standard output (as --json -), the table goes to stderr; --quiet prints no
    # progress; a name with a newline is one escaped line; a broken symlink is a per-file
    # error, not silently passed over.
    from PIL import Image

    d = tmp_path / "imgs"
    d.mkdir()
    for i, a in enumerate(np.load(run / "data" / "val.images.npy")[:12]):
        Image.fromarray(a[..., 0]).save(d / f"ok{i:02d}.png")
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(d / "two\nlines.png")
    (d / "gone.png").symlink_to(tmp_path / "nowhere.png")
    weights = str(run / "run" / "model.safetensors")
    assert main(["predict", weights, str(d), "--csv", "-", "--top-k", "1"]) == 1
    out, err = capsys.readouterr()
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0][0] == "path" and len(rows) == 1 + 13 + 1  # header, 13 images, the link
    broken = [r for r in rows if r[0].endswith("gone.png")]
    assert "broken symlink" in broken[0][-1]
    assert "two\\nlines.png" in err and "two\nlines.png" not in err  # the table, escaped
    assert [r[0] for r in rows[1:]] == sorted(r[0] for r in rows[1:])  # in path order
    assert main(["predict", weights, str(d), "--quiet"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"  {d}/gone.png: broken symlink (to {tmp_path / 'nowhere.png'})",
        "alexnet predict: 1 of 14 files could not be read (see above)",
    ]  # only the failures: no progress lines
    assert main(["predict", weights, str(d), "--csv", "-", "--json", "-"]) == 2
    assert "both ask for standard output" in capsys.readouterr().err
    # A folder as --json/--csv is refused before the work (no table), as one line.
    (tmp_path / "taken.json").write_text("mine\n")
    for cmd in (["predict", weights, str(d)], ["evaluate", weights, "--data", str(run / "data")]):
        assert main([*cmd, "--csv", f"{tmp_path / 'taken.json'}/"]) == 2  # `file/`: a folder
        assert "is a directory" in capsys.readouterr().err
        assert (tmp_path / "taken.json").read_text() == "mine\n"
        assert main([*cmd, "--json", str(tmp_path)]) == 2
        out, err = capsys.readouterr()
        assert (
            out == ""
            and err
            == f"alexnet {cmd[0]}: error: --json {tmp_path} is a directory; name a file to write\n"
        )


def test_sigterm_stops_the_inference_commands_like_ctrl_c(run, cli_env):
    # A SIGTERM mid-evaluation (here sent by the evaluation itself) unwinds: the loader's
    # workers, which leave group signals to this process, are shut down, and the status is
    # 130 with one line, not a death by signal that leaves them writing errors.
    script = (
        "import os, signal, sys, time\n"
        "import alexnet.apps.evaluate as E\n"
        "from alexnet.cli import main\n"
        "def stopped(*a, **k):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(30)\n"
        "E.run_evaluation = stopped\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", script, "evaluate", str(run / "run" / "model.safetensors"),
         "--data", str(run / "data")],
        env=cli_env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 130 and r.stderr == "alexnet evaluate: interrupted\n", r


def test_predict_into_a_pipe_closed_early_is_quiet(run, tmp_path, cli_env):
    # `alexnet predict ... | head -1`: no error line, the status of a SIGPIPE'd program.
    from PIL import Image

    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(4):
        Image.fromarray(np.full((28, 28), i * 60, np.uint8)).save(d / f"{i}.png")
    proc = subprocess.Popen(
        [sys.executable, "-m", "alexnet", "predict", str(run / "run" / "model.safetensors"),
         str(d), "--quiet", "--csv", "-"],
        env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
    )  # fmt: skip
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""


def test_evaluate_csv_to_stdout(run, capsys):
    assert main(["evaluate", str(run / "run" / "model.safetensors"), "--data",
                 str(run / "data"), "--workers", "0", "--csv", "-"]) == 0  # fmt: skip
    out, err = capsys.readouterr()
    assert out.startswith("index,class,name,images") and "top-1 error" in err


def test_shown_names_are_one_line_and_never_alike():
    from alexnet.apps.predict import shown

    assert shown("café photo.jpg") == "café photo.jpg"  # printable: as it is
    assert shown("two\nlines.jpg") == "two\\nlines.jpg"
    assert shown("a\\b\n.jpg") == "a\\\\b\\n.jpg"  # a literal backslash is doubled
    assert shown("a\\nb.jpg") != shown("a\nb.jpg")  # a backslash and n is not a newline
    assert shown("x\u202ey.jpg") == "x\\u202ey.jpg"  # a right-to-left override
    assert shown("bad\udcff.jpg") == "bad\\udcff.jpg"  # an undecodable byte
    assert "\n" not in shown("x\u2028y\r")


def test_predict_carries_on_past_a_folder_it_cannot_read(run, tmp_path, monkeypatch, capsys):
    from pathlib import Path

    from PIL import Image

    (tmp_path / "ok").mkdir()
    (tmp_path / "locked").mkdir()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "ok" / "a.png")
    iterdir = Path.iterdir

    def refuse(self):
        if self.name == "locked":
            raise PermissionError(13, "Permission denied", str(self))
        return iterdir(self)

    (tmp_path / "noexec").mkdir()  # listed, but its entries cannot be looked at
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "noexec" / "b.png")
    is_symlink = Path.is_symlink

    def no_entry(self):
        if self.parent.name == "noexec":
            raise PermissionError(13, "Permission denied", str(self))
        return is_symlink(self)

    monkeypatch.setattr(Path, "iterdir", refuse)
    monkeypatch.setattr(Path, "is_symlink", no_entry)
    assert main(["predict", str(run / "run" / "model.safetensors"), str(tmp_path),
                 "--json", str(tmp_path / "p.json")]) == 1  # fmt: skip
    results = json.loads((tmp_path / "p.json").read_text())
    assert [r["path"].rsplit("/", 1)[-1] for r in results] == ["a.png", "locked", "b.png"]
    assert "predictions" in results[0]
    assert all("cannot be read (Permission denied)" in r["error"] for r in results[1:])


def test_csv_keeps_the_bytes_of_names_that_are_not_utf8(tmp_path, monkeypatch):
    import sys

    from alexnet.atomic import text_output

    name = "bad\udcff.png"  # the byte 0xff, as Python decodes it from a file name
    with text_output(tmp_path / "p.csv", newline="") as f:
        f.write(name)
    assert (tmp_path / "p.csv").read_bytes() == b"bad\xff.png"
    buf = io.BytesIO()
    stdout = io.TextIOWrapper(buf, encoding="utf-8", errors="strict")
    monkeypatch.setattr(sys, "stdout", stdout)
    with text_output("-") as f:
        f.write(name)
    assert buf.getvalue() == b"bad\xff.png" and stdout.errors == "strict"  # restored
