"""The CUDA path: training, resuming, evaluating and predicting on one GPU, a process group
through torchrun, our LRN against PyTorch's, towers on two GPUs. Skipped without CUDA
(``scripts/gpu-check.sh`` runs them on a GPU machine)."""

import json
import subprocess
import sys

import pytest
import torch

from alexnet.cli import main
from alexnet.data.prepare import prepare
from alexnet.engine.checkpoint import load_checkpoint
from alexnet.network.lrn import LocalResponseNorm
from helpers import make_split_folders

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    """3 classes of 40x40 JPEGs stored at 32 px, with a val split: the loader workers,
    pinned memory and both decode paths run on it."""
    root = tmp_path_factory.mktemp("gpu")
    make_split_folders(root / "src", ("train", "val"), classes=3, per_class=16, size=(40, 40))
    prepare(str(root / "src"), root / "prep", size=32, progress=False)
    return root


def _sets(*pairs: str) -> list[str]:
    return [a for p in pairs for a in ("--set", p)]


def _train_args(jpegs, out, *settings: str) -> list[str]:
    data = ["--data", str(jpegs / "prep"), "--out", str(out), "--quiet"]
    return ["train", "--preset", "cifar10", *data, *_sets(*settings)]


def _summary(out) -> dict:
    return json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize(
    "precision,decode,crop",
    [
        ("bf16", "cpu", "pad"),
        ("fp16", "cpu", "pad"),
        ("bf16", "cuda", "pad"),
        ("bf16", "cuda", "crop"),
    ],
)
def test_train_resume_evaluate_predict(tmp_path, jpegs, precision, decode, crop):
    out = tmp_path / "run"
    crops = ["data.pad=4"] if crop == "pad" else ["data.pad=0", "data.crop=28"]
    args = _train_args(
        jpegs, out, "run.device=cuda", f"run.precision={precision}", "run.channels_last=true",
        "run.batch_size=16", "run.epochs=1", "data.workers=2", f"data.decode={decode}", *crops,
    )  # fmt: skip
    assert main(args) == 0
    first = load_checkpoint(out / "checkpoint.pt")
    assert first["progress"]["epoch"] == 1
    assert (first["scaler"] is not None) == (precision == "fp16")
    assert main(["train", "--resume", "--out", str(out), "--quiet", "--set", "run.epochs=2"]) == 0
    s = _summary(out)
    assert s["epochs"] == 2 and s["device"] == "cuda:0"
    ex = s["execution"]
    assert (ex["precision"], ex["decode"], ex["channels_last"]) == (precision, decode, True)
    assert s["best_val_top1_error"] is not None
    report = tmp_path / "eval.json"
    assert main(["evaluate", str(out / "model.safetensors"), "--data", str(jpegs / "prep"),
                 "--split", "val", "--device", "cuda", "--json", str(report)]) == 0  # fmt: skip
    assert json.loads(report.read_text())["images"] == 48
    preds = tmp_path / "pred.json"
    assert main(["predict", str(out / "model.safetensors"), str(jpegs / "src" / "val" / "class_0"),
                 "--device", "cuda", "--json", str(preds), "--quiet"]) == 0  # fmt: skip
    assert len(json.loads(preds.read_text())) == 16


@pytest.mark.parametrize("train", [True, False])
def test_nvjpeg_batches_match_the_cpu_workers(tmp_path, train):
    from alexnet.data.dataset import LoaderSpec, Prepared, make_loader
    from helpers import make_folder_dataset

    src = make_folder_dataset(tmp_path / "src", classes=2, per_class=5, size=(300, 260))
    prepare(str(src), tmp_path / "prep", progress=False, val_fraction=0)
    data = Prepared(tmp_path / "prep")
    batches = {}
    for decode in ("cpu", "cuda"):
        loader = make_loader(data, "train", LoaderSpec(train=train), 4, torch.device("cuda"),
                             data.preprocessing(crop=224), workers=1, decode=decode)  # fmt: skip
        loader.sampler.set_epoch(1)
        batches[decode] = [(x.cpu(), y.cpu()) for x, y in loader]
    for (xa, ya), (xb, yb) in zip(batches["cpu"], batches["cuda"], strict=True):
        assert torch.equal(ya, yb) and xa.shape == xb.shape
        assert (xa - xb).abs().mean() < 1.0 and (xa - xb).abs().max() <= 16  # IDCT rounding


def test_torchrun_one_process_joins_an_nccl_group(tmp_path, jpegs, cli_env):
    """The code a multi-GPU run executes (NCCL group, DDP, the all-reduced sums and stop
    flag, the run-directory lock's flag), in a world of one; frozen conv layers too (DDP
    must be built after freezing)."""
    out = tmp_path / "run"
    args = _train_args(
        jpegs, out, "run.device=cuda", "run.batch_size=16", "run.epochs=2", "run.log_every=2",
        "data.workers=2", "freeze_conv=true",
    )  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           "-m", "alexnet", *args]  # fmt: skip
    done = subprocess.run(cmd, env=cli_env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ex = _summary(out)["execution"]
    assert ex["process_group"] == "nccl" and ex["world_size"] == 1
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["progress"]["epoch"] == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_our_lrn_matches_pytorchs_on_cuda(dtype):
    torch.manual_seed(0)
    x = torch.randn(8, 96, 27, 27, device="cuda") * 3
    g = torch.randn_like(x)
    results = {}
    for impl, layout in (("torch", torch.contiguous_format), ("fast", torch.channels_last)):
        xi = x.to(dtype).contiguous(memory_format=layout).clone().requires_grad_()
        # PyTorch's reference in float32 (its bf16 is rounded at every step)
        inp = xi.float() if impl == "torch" else xi
        y = LocalResponseNorm(impl=impl)(inp)
        y.backward(g.to(y.dtype))
        results[impl] = (y.float(), xi.grad.float())
    tol = {"atol": 1e-5, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(results["fast"][0], results["torch"][0], **tol)
    torch.testing.assert_close(results["fast"][1], results["torch"][1], **tol)
    # and the CUDA result agrees with the CPU one
    cpu = LocalResponseNorm()(x.cpu().to(dtype).contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(results["fast"][0].cpu(), cpu.float(), **tol)


def test_compiled_lrn_is_for_inference_only(monkeypatch):
    """ALEXNET_LRN_COMPILE=1: inference runs the compiled pointwise form (same values as
    the banded matmul); a step under autograd keeps the banded matmul."""
    from alexnet.network import lrn

    monkeypatch.setenv("ALEXNET_LRN_COMPILE", "1")
    x = (torch.randn(4, 96, 13, 13, device="cuda") * 3).contiguous(
        memory_format=torch.channels_last
    )
    assert lrn._use_compiled(x) and not lrn._use_compiled(x.clone().requires_grad_())
    with torch.no_grad():
        y = LocalResponseNorm()(x)
    assert lrn._compile_failed is None
    torch.testing.assert_close(y, LocalResponseNorm(impl="matmul")(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_lrn_on_cuda(dtype):
    pytest.importorskip("triton")
    torch.manual_seed(0)
    x = (torch.randn(8, 96, 27, 27, device="cuda") * 3).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn_like(x)
    out = {}
    for impl in ("matmul", "triton"):
        xi = x.clone().requires_grad_()
        y = LocalResponseNorm(impl=impl, groups=2)(xi)
        y.backward(g)
        out[impl] = (y.float(), xi.grad.float())
    tol = {"atol": 1e-5, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 5e-2, "rtol": 2e-2}
    torch.testing.assert_close(out["triton"][0], out["matmul"][0], **tol)
    torch.testing.assert_close(out["triton"][1], out["matmul"][1], **tol)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_towers_on_two_gpus(tmp_path, jpegs):
    out = tmp_path / "run"
    args = _train_args(
        jpegs, out, "run.device=cuda:0", "run.tower_devices=[cuda:0,cuda:1]",
        "run.batch_size=16", "run.epochs=1", "data.workers=0",
    )  # fmt: skip
    assert main(args) == 0
    assert _summary(out)["epochs"] == 1


def test_compile_trains(tmp_path, jpegs):
    out = tmp_path / "run"
    args = _train_args(
        jpegs, out, "run.device=cuda", "run.compile=true", "run.batch_size=16", "run.epochs=1",
        "data.workers=0",
    )  # fmt: skip
    assert main(args) == 0
    assert _summary(out)["execution"]["compile"] is True
