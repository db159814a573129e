import json

import pytest

from alexnet.bench import benchmark as B
from alexnet.cli import main
from helpers import make_folder_dataset


def test_model_benchmark_rejects_bad_options(capsys):
    base = ["benchmark", "model", "--batch-size", "1", "--repeats", "1"]
    assert main([*base, "--layouts", "sideways"]) == 2
    assert main([*base, "--precisions", "fp32,xyz"]) == 2
    assert main([*base, "--precisions", "fp16", "--device", "cpu"]) == 2
    assert "--precisions=fp16 cannot run on cpu" in capsys.readouterr().err


@pytest.mark.slow
def test_model_benchmark_cli_json(capsys):
    args = ["benchmark", "model", "--json", "--batch-size", "1", "--precisions", "fp32,bf16",
            "--layouts", "channels_last", "--repeats", "1"]  # fmt: skip
    assert main(args) == 0
    r = json.loads(capsys.readouterr().out)
    assert {row["model"] for row in r["rows"]} == {"paper", "paper-direct", "owt", "torchvision"}
    assert len(r["rows"]) == 8  # 4 models x 2 precisions, channels_last only
    peaks = r["matmul_peak_gflops"]
    assert set(peaks) == {"fp32", "bf16"} and all(v > 0 for v in peaks.values())
    for row in r["rows"]:
        assert row["channels_last"] and row["train_images_per_s"] > 0
        # "of peak" compares each precision with its own matmul peak.
        frac = row["train_gflops"] / peaks[row["precision"]]
        assert row["train_fraction_of_matmul_peak"] == pytest.approx(frac)

    def train_rate(model, precision):
        row = next(x for x in r["rows"] if (x["model"], x["precision"]) == (model, precision))
        return row["train_images_per_s"]

    for p in ("fp32", "bf16"):
        assert r["ratios"][p] == train_rate("paper", p) / train_rate("torchvision", p)
        rounds = [
            next(x for x in r["rows"] if (x["model"], x["precision"]) == (m, p))["train_rounds_s"]
            for m in ("paper", "torchvision")
        ]
        # One round: the paired ratio is that round's ratio, the same as the medians' ratio.
        assert r["paired_ratios"][p] == pytest.approx(rounds[1][0] / rounds[0][0])
    assert r["ratio"] == min(r["ratios"].values())
    assert "channels_last" in r["ratio_settings"] and r["machine"]["torch"]


@pytest.mark.slow
def test_e2e_benchmark_structure(tmp_path):
    src = make_folder_dataset(tmp_path / "src", classes=2, per_class=4, size=(300, 260))
    r = B.bench_e2e(str(src), variant="owt", batch=2, steps=2, workers=0)
    assert r["e2e_images_per_s"] > 0 and r["model_only_images_per_s"] > 0


@pytest.mark.slow
def test_scale_benchmark_runs_two_gloo_processes():
    r = B.bench_scale(variant="small", batch=4, steps=1, processes=2)
    assert r["one_process_images_per_s"] > 0 and r["ddp_images_per_s"] > 0
    assert r["allreduce_s"] > 0 and r["allreduce_share_of_step"] > 0
    assert r["threads_per_process"] >= 1
    assert "all-reduce" in B.format_scale(r)


def test_conv_benchmark_structure():
    r = B.bench_conv(batch=2, repeats=1)
    assert [row["layer"] for row in r["layers"]] == ["conv2", "conv3", "conv4", "conv5"]
    assert r["layers"][0]["shape"] == [2, 96, 27, 27] and r["layers"][0]["groups"] == 2
    for row in r["layers"]:
        assert row["direct_ms"] > 0 and row["fourier_ms"] > 0
        assert row["predicted_speedup"] > 1.4 and row["auto_uses_fourier"]
    assert "conv5" in B.format_conv(r)
    small = B.bench_conv(batch=2, repeats=1, variant="small", input_size=28)
    assert small["layers"][1]["shape"] == [2, 128, 7, 7]  # conv3 of the small net
    assert [row["auto_uses_fourier"] for row in small["layers"]] == [False, True, False, False]


def test_benchmark_rejects_zero_rounds(capsys):
    with pytest.raises(SystemExit) as e:
        main(["benchmark", "conv", "--repeats", "0"])
    assert e.value.code == 2 and "--repeats: must be >= 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        B.interleaved({"a": lambda: None}, 0)


def test_several_batch_sizes_are_for_the_model_benchmark_only(capsys):
    assert main(["benchmark", "lrn", "--batch-size", "128,512"]) == 2
    assert "takes one --batch-size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["benchmark", "model", "--batch-size", "128,x"])


def test_gpu_benchmarks_say_what_they_need(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["benchmark", "e2e", "--device", "cuda"]) == 2
    assert "no CUDA device is available" in capsys.readouterr().err


def test_replicated_prepared_directory_reads_back_every_copy(tmp_path):
    import numpy as np

    from alexnet.bench.cuda import replicate_prepared
    from alexnet.data.dataset import Prepared
    from alexnet.data.prepare import prepare

    src = make_folder_dataset(tmp_path / "src", classes=2, per_class=3, size=(100, 80))
    prepare(str(src), tmp_path / "prep", progress=False, val_fraction=0)
    one = Prepared(tmp_path / "prep").split("train")
    many = Prepared(replicate_prepared(tmp_path / "prep", 3, tmp_path / "rep")).split("train")
    assert len(many) == 3 * len(one)
    assert list(many.labels) == list(one.labels) * 3
    for i in range(len(many)):
        assert np.array_equal(many.image(i), one.image(i % len(one)))
