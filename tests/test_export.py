"""Exports: ONNX graphs that onnxruntime runs to PyTorch's numbers, with the preprocessing
inside and the contract in the metadata."""

import json

import numpy as np
import pytest
import torch

from alexnet.cli import main
from alexnet.config import ModelConfig
from alexnet.data.images import image_to_array
from alexnet.data.preprocess import Preprocessing
from alexnet.engine.checkpoint import export_weights
from alexnet.engine.inference import load_model
from alexnet.network.model import build_model
from helpers import SHARED_DATA, photo

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

VARIANTS = {  # small widths keep the test quick; every layer type of each variant is there
    "paper": ModelConfig(variant="paper", width=0.25, fc_width=64, num_classes=7),
    "owt": ModelConfig(variant="owt", width=0.25, fc_width=64, num_classes=7),
    "small": ModelConfig(variant="small", num_classes=7, input_size=32),
}


def _weights(tmp_path, name: str, normalize: str = "mean_image"):
    cfg = VARIANTS[name]
    torch.manual_seed(0)
    model = build_model(cfg)
    side = 32 if name == "small" else 256
    crop = 32 if name == "small" else 224
    rng = np.random.default_rng(1)
    prep = Preprocessing(
        image_size=(side, side, 3), crop=crop, normalize=normalize,
        input_scale=1.0 if name != "small" else 1 / 64,
        mean=rng.uniform(90, 140, (side, side, 3)).astype(np.float32),
        eigenvalues=None, eigenvectors=None,
        classes=tuple(f"c{i}" for i in range(7)), names=tuple(f"class {i}" for i in range(7)),
    )  # fmt: skip
    path = tmp_path / f"{name}.safetensors"
    import dataclasses

    export_weights(path, model.state_dict(), dataclasses.asdict(cfg), prep)
    return path


def _real_images(size: int, tmp_path) -> np.ndarray:
    files = sorted((SHARED_DATA / "imagenet-samples").glob("*.JPEG"))[:3]
    if not files:  # the shared samples are not everywhere: real JPEG encodings made here
        files = []
        for i in range(3):
            photo(300, 220, seed=i).save(tmp_path / f"p{i}.jpg", quality=90)
            files.append(tmp_path / f"p{i}.jpg")
    return np.stack([image_to_array(f, (size, size, 3)) for f in files])


@pytest.mark.parametrize("name", ["paper", "owt", "small"])
def test_onnx_export_runs_in_onnxruntime_as_in_pytorch(tmp_path, name, capsys):
    weights = _weights(tmp_path, name)
    out = tmp_path / f"{name}.onnx"
    assert main(["export", str(weights), str(out)]) == 0
    assert "onnxruntime vs PyTorch: max |diff|" in capsys.readouterr().out
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["format"] == "alexnet-onnx"
    assert json.loads(meta["classes"]) == [f"c{i}" for i in range(7)]
    assert json.loads(meta["model_config"])["variant"] == name
    assert json.loads(meta["preprocessing"])["crop"] == (32 if name == "small" else 224)
    lm = load_model(weights)
    side = lm.prep.image_size[0]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    for images in (rng.integers(0, 256, (5, side, side, 3), dtype=np.uint8),  # batch 5: dynamic
                   _real_images(side, tmp_path)):  # fmt: skip
        logits, probs = session.run(None, {"images": images})
        from alexnet.engine.inference import images_to_inputs

        with torch.no_grad():
            want = lm.model(images_to_inputs(list(images), lm)).numpy()
        assert np.abs(logits - want).max() <= 1e-4
        assert np.allclose(probs.sum(1), 1, atol=1e-5)
    if name == "paper":  # the towers' LRN is in the graph as plain operators
        ops = {n.op_type for n in model.graph.node}
        assert {"Conv", "Pow", "Pad"} <= ops and "LRN" not in ops


def test_onnx_export_with_torchvision_normalisation(tmp_path):
    weights = _weights(tmp_path, "owt", normalize="torchvision")
    out = tmp_path / "tv.onnx"
    assert main(["export", str(weights), str(out)]) == 0
    lm = load_model(weights)
    from alexnet.engine.onnx_export import verify

    assert verify(out, lm, _real_images(256, tmp_path)) <= 1e-4


def test_onnx_export_refuses_a_wrong_suffix(tmp_path, capsys):
    weights = _weights(tmp_path, "small")
    assert main(["export", str(weights), str(tmp_path / "m.bin"), "--format", "onnx"]) == 2
    assert "needs the .onnx suffix" in capsys.readouterr().err
    assert not (tmp_path / "m.bin").exists()


def test_torch_hub_loads_each_variant_from_this_checkout(tmp_path):
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    for name in ("paper", "owt", "small"):
        weights = _weights(tmp_path, name)
        model = torch.hub.load(root, name, source="local", weights=str(weights))
        lm = load_model(weights)
        x = torch.randn(2, 3, 32 if name == "small" else 224, 32 if name == "small" else 224)
        with torch.no_grad():
            assert torch.equal(model(x), lm.model(x))
        assert model.class_names == lm.names and not model.training
        assert model.preprocessing.crop == lm.prep.crop
    untrained = torch.hub.load(root, "small", source="local", num_classes=3)
    assert untrained.cfg.num_classes == 3
    with pytest.raises(ValueError, match="holds the 'small' variant"):
        torch.hub.load(root, "paper", source="local", weights=str(tmp_path / "small.safetensors"))


def test_torch_hub_loads_torchvisions_weights_into_owt(tmp_path):
    from pathlib import Path

    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.alexnet().eval()
    torch.save(reference.state_dict(), tmp_path / "alexnet-owt.pth")
    root = str(Path(__file__).resolve().parents[1])
    model = torch.hub.load(root, "owt", source="local", weights=str(tmp_path / "alexnet-owt.pth"))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))
    assert model.preprocessing.normalize == "torchvision"


def test_model_card_with_the_run_and_every_export(trained_run, tmp_path, capsys):
    """MODEL_CARD.md in the run directory, the same facts in model.safetensors, and a card
    beside every export that carries the run's facts through re-exports."""
    from safetensors import safe_open

    run = trained_run / "run"
    text = (run / "MODEL_CARD.md").read_text()
    summary = json.loads((run / "summary.json").read_text())
    best = f"{100 * summary['best_val_top1_error']:.2f}%"
    for fact in ("AlexNet (small)", "64 training images", "2 epochs at batch 16", best,
                 "centre crop", "precision fp32", "alexnet train --config", "Intended use"):  # fmt: skip
        assert fact in text, fact
    with safe_open(str(run / "model.safetensors"), framework="pt") as f:
        card = json.loads(f.metadata()["card"])
    assert card["results"]["best_val_top1_error"] == summary["best_val_top1_error"]
    assert card["data"]["train_images"] == 64
    # The card leads with the file's own weights (the last epoch), not the best epoch's.
    final = f"{100 * summary['final_val_top1_error']:.2f}%"
    assert (
        f"These weights (epoch {summary['epochs']}): validation top-1 / top-5 error {final}" in text
    )
    assert card["results"]["weights_epoch"] == summary["epochs"]
    with safe_open(str(run / "best.safetensors"), framework="pt") as f:
        best_card = json.loads(f.metadata()["card"])["results"]
    assert best_card["weights_epoch"] == summary["best_epoch"]
    assert best_card["weights_val_top1_error"] == summary["best_val_top1_error"]
    out = tmp_path / "exp" / "small.safetensors"
    out.parent.mkdir()
    assert main(["export", str(run / "checkpoint.pt"), str(out)]) == 0
    again = tmp_path / "exp" / "again.safetensors"
    assert main(["export", str(out), str(again)]) == 0
    for name in ("small", "again"):
        exported = (tmp_path / "exp" / f"{name}.safetensors.MODEL_CARD.md").read_text()
        assert best in exported and "64 training images" in exported
    onnx_out = tmp_path / "exp" / "small.onnx"
    assert main(["export", str(again), str(onnx_out)]) == 0
    props = {p.key: p.value for p in onnx.load(str(onnx_out)).metadata_props}
    assert json.loads(props["model_card"])["results"]["best_epoch"] == summary["best_epoch"]


def test_cards_of_older_files_still_describe_their_own_weights(trained_run, tmp_path):
    from alexnet.engine.card import render_card
    from alexnet.engine.inference import load_model

    # A card written before weights_* existed: its last-epoch result leads.
    old = {"model": {"variant": "small", "parameters": 1, "classes": 10, "input": "x"},
           "results": {"best_val_top1_error": 0.2, "best_epoch": 3, "epochs": 5,
                       "final_val_top1_error": 0.24, "final_val_top5_error": 0.06}}  # fmt: skip
    text = render_card(old, "m.safetensors")
    assert "These weights (epoch 5): validation top-1 / top-5 error 24.00% / 6.00%" in text
    assert "Best validation epoch: 3" in text
    # A checkpoint saved without a card: the card is made from its rows and progress.
    from alexnet.engine.checkpoint import load_checkpoint

    state = load_checkpoint(trained_run / "run" / "checkpoint.pt")
    del state["card"]
    torch.save(state, tmp_path / "old.pt")
    card = load_model(tmp_path / "old.pt").extra["card"]["results"]
    last = state["metrics"][-1]
    assert card["weights_epoch"] == state["progress"]["epoch"] == last["epoch"]
    assert card["weights_val_top1_error"] == last["val_top1_error"]


def test_an_export_the_exporter_refuses_is_one_line(tmp_path, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise RuntimeError("Failed to export the model\n" + "internal frame\n" * 50)

    monkeypatch.setattr(torch.onnx, "export", refuse)
    weights = _weights(tmp_path, "small")
    assert main(["export", str(weights), str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "could not be exported to ONNX" in err and "Failed to export the model" in err
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "m.MODEL_CARD.md").exists()


def test_export_never_replaces_a_file_silently_and_checks_the_opset(tmp_path, capsys):
    weights = _weights(tmp_path, "small")
    out = tmp_path / "m.onnx"
    assert main(["export", str(weights), str(out), "--opset", "7"]) == 2
    assert "--opset 7: this export needs opset 18.." in capsys.readouterr().err
    assert main(["export", str(weights), str(out)]) == 0
    assert (tmp_path / "m.onnx.MODEL_CARD.md").is_file()
    assert main(["export", str(weights), str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(["export", str(weights), str(out), "--force"]) == 0
    (tmp_path / "d.safetensors").mkdir()
    assert main(["export", str(weights), str(tmp_path / "d.safetensors")]) == 2
    assert "is a directory" in capsys.readouterr().err
