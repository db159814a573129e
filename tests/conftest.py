import os
import sys
from pathlib import Path

import pytest
import torch

from alexnet import hardware

torch.set_num_threads(min(2, os.cpu_count() or 1))
# `model.conv_impl: auto` decides by the cost model alone in tests (no timing probe, no
# machine-dependent choice); the probe has its own tests. Subprocesses inherit this.
os.environ["ALEXNET_FOURIER_PROBE"] = "0"
# A suite run under ATEN_CPU_CAPABILITY (imitating an older CPU) compiles into its own
# kernel cache, so it cannot leave kernels that crash a later run without it.
hardware.separate_compile_cache()

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@pytest.fixture
def cli_env() -> dict[str, str]:
    """Environment for running `python -m alexnet` in a subprocess."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture
def python() -> str:
    return sys.executable


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A tiny trained run shared by the evaluation and figure tests: prepared
    Fashion-MNIST-like data (64 train, 30 test images) and a 2-epoch checkpoint."""
    from alexnet.config import load_train_config
    from alexnet.data.prepare import prepare
    from alexnet.engine.train import train
    from helpers import make_fashion_mnist

    root = tmp_path_factory.mktemp("trained")
    make_fashion_mnist(root / "raw", n_train=64, n_val=30)
    prepare(str(root / "raw"), root / "data", progress=False)
    overrides = [f"data.path={root / 'data'}", "model.width=0.25", "model.fc_width=64",
                 "run.batch_size=16", "run.epochs=2", "data.workers=0", "run.precision=fp32",
                 "model.conv_impl=direct", "run.threads=2"]  # fmt: skip
    train(load_train_config("fashion-mnist", None, overrides), root / "run", quiet=True)
    return root
