import base64
import io
import json
import os
import re
import shutil
import signal
from pathlib import Path

import pytest
from PIL import Image

from alexnet.apps import experiments as E
from alexnet.apps import visualize as V
from alexnet.apps.report import SECTIONS, build_report
from alexnet.cli import main


@pytest.fixture
def run(trained_run):
    return trained_run


def test_epochs_to_threshold_on_a_hand_made_curve():
    curve = [(0.5, 0.60), (1.0, 0.40), (1.5, 0.30), (2.0, 0.20), (2.5, 0.10)]
    # 0.30 at 1.5 and 0.20 at 2.0: 0.25 halfway, at 1.75.
    assert E.epochs_to_threshold(curve, 0.25) == pytest.approx(1.75)
    assert E.epochs_to_threshold(curve, 0.40) == pytest.approx(1.0)
    assert E.epochs_to_threshold(curve, 0.70) == pytest.approx(0.5)
    assert E.epochs_to_threshold(curve, 0.05) is None


def test_relu_tanh_summary_picks_each_sides_best_lr():
    def run_(act, lr, hit):
        return {
            "activation": act,
            "lr": lr,
            "seed": 0,
            "seconds_per_epoch": 10.0,
            "curve": [(hit, 0.2)] if hit else [(1.0, 0.5)],
        }

    runs = [
        run_("relu", 0.01, 1.0),
        run_("relu", 0.1, 0.5),
        run_("tanh", 0.01, 3.0),
        run_("tanh", 0.1, None),
    ]
    s = E.summarise_relu_tanh(runs, 0.25, (0.01, 0.1), (0,))
    assert s["best"]["relu"]["lr"] == 0.1 and s["best"]["tanh"]["lr"] == 0.01
    assert s["speedup_epochs"] == pytest.approx(6.0)
    assert s["best"]["relu"]["seconds"] == pytest.approx(5.0)


def test_relu_tanh_ratio_spread_is_seed_by_seed():
    runs = [
        {"activation": a, "lr": 0.01, "seed": seed, "seconds_per_epoch": 1.0, "curve": [(hit, 0.2)]}
        for a, hits in (("relu", (1.0, 2.0)), ("tanh", (6.0, 8.0)))
        for seed, hit in enumerate(hits)
    ]
    s = E.summarise_relu_tanh(runs, 0.25, (0.01,), (0, 1))
    assert s["speedup_epochs"] == pytest.approx(7.0 / 1.5)
    assert s["speedup_per_seed"] == pytest.approx([6.0, 4.0])
    assert s["speedup_std"] == pytest.approx(2**0.5)


def test_relu_tanh_sweeps_lrs_on_the_first_seed_then_repeats_the_best(monkeypatch, tmp_path):
    # Fake training: the epochs to 25% depend on (activation, lr); tanh at 0.1 never gets there.
    hit = {("relu", 0.01): 2.0, ("relu", 0.1): 1.0, ("tanh", 0.01): 6.0, ("tanh", 0.1): None}
    made = []

    def fake(data_dir, act, lr, epochs, seed, *args):
        made.append((act, lr, seed))
        h = hit[(act, lr)]
        curve = [(h, 0.2)] if h else [(1.0, 0.5 if lr == 0.1 else 0.6)]
        return {"activation": act, "lr": lr, "seed": seed, "curve": curve, "seconds": 1.0,
                "diverged": False, "seconds_per_epoch": 1.0}  # fmt: skip

    monkeypatch.setattr(E, "_train_curve", fake)
    monkeypatch.setattr(E, "_plot_relu_tanh", lambda *a: [str(tmp_path / "f.png")])
    r = E.relu_vs_tanh(
        str(tmp_path), str(tmp_path / "o"), lrs=(0.01, 0.1), seeds=(0, 1, 2), progress=False
    )
    assert made == [("relu", 0.01, 0), ("relu", 0.1, 0), ("relu", 0.1, 1), ("relu", 0.1, 2),
                    ("tanh", 0.01, 0), ("tanh", 0.1, 0), ("tanh", 0.01, 1), ("tanh", 0.01, 2)]  # fmt: skip
    assert r["best"]["relu"]["lr"] == 0.1 and r["best"]["tanh"]["lr"] == 0.01
    assert r["speedup_epochs"] == pytest.approx(6.0) and r["speedup_per_seed"] == [6.0] * 3
    # If no lr reaches the threshold, the seeds repeat the lr with the lowest final error.
    runs = [fake(None, "tanh", lr, 1, 0) for lr in (0.01, 0.1)]
    runs = [{**x, "curve": [(1.0, 0.5 if x["lr"] == 0.1 else 0.6)]} for x in runs]
    assert E.best_lr(runs, "tanh", (0.01, 0.1), 0, 0.25) == 0.1
    # ... but never one that diverged, however low its last point.
    runs[1]["diverged"] = True
    assert E.best_lr(runs, "tanh", (0.01, 0.1), 0, 0.25) == 0.01
    # A side whose later seed missed the threshold says so (no ratio, no "never reached").
    partial = [{**x, "lr": 0.01, "seed": seed, "diverged": False, "curve": c}
               for seed, c in ((0, [(2.0, 0.2)]), (1, [(40.0, 0.3)]))
               for x in runs[:1]]  # fmt: skip
    partial += [{**x, "activation": "relu", "curve": [(1.0, 0.2)]} for x in partial]
    r = E.summarise_relu_tanh(partial, 0.25, (0.01,), (0, 1))
    assert r["best"]["tanh"]["missed_seeds"] == [1] and r["speedup_epochs"] is None
    r.update(data="d", seeds=[0, 1], lrs=[0.01], threshold=0.25, epochs=40)
    text = E.format_relu_tanh(r)
    assert "tanh: lr 0.01: seed(s) 1 did not reach 25% training error within 40 epochs" in text
    assert "seed 0, tanh: lr 0.01 2.00" in text


def test_relu_tanh_run_ends_once_it_reaches_the_threshold(tmp_path):
    from alexnet.data.prepare import prepare
    from helpers import make_cifar10

    prepare(str(make_cifar10(tmp_path / "raw", per_batch=40)), tmp_path / "p", progress=False)
    full = E._train_curve(str(tmp_path / "p"), "relu", 0.01, 2, 0, 4, 32, 0)
    stop = full["curve"][1][1] + 1e-9  # reached at the second point
    short = E._train_curve(str(tmp_path / "p"), "relu", 0.01, 2, 0, 4, 32, 0, stop_below=stop)
    assert short["curve"] == full["curve"][: len(short["curve"])] and len(short["curve"]) <= 2


def test_a_run_stuck_at_chance_stops_after_two_epochs(tmp_path, monkeypatch):
    import numpy as np
    import torch

    from alexnet.data.dataset import Prepared
    from alexnet.data.prepare import prepare
    from helpers import make_cifar10

    prepare(str(make_cifar10(tmp_path / "raw", per_batch=40)), tmp_path / "p", progress=False)
    labels = Prepared(tmp_path / "p").split("train").labels
    rarest = int(np.argmin(np.bincount(labels, minlength=10)))

    def dead(c, classes, size, activation, init):  # always the rarest class, as dead ReLUs do
        head = torch.nn.Linear(c * size * size, classes)
        torch.nn.init.zeros_(head.weight)
        with torch.no_grad():
            head.bias.copy_(torch.nn.functional.one_hot(torch.tensor(rarest), classes).float())
        return torch.nn.Sequential(torch.nn.Flatten(), head)

    monkeypatch.setattr(E, "four_layer_cnn", dead)
    r = E._train_curve(str(tmp_path / "p"), "relu", 0.0, 5, 0, 2, 32, 0, stop_below=0.25)
    assert r["stuck_at_chance"] and not r["diverged"]
    assert r["curve"][-1][0] == pytest.approx(2.0)  # two epochs, not five
    assert E.best_lr([r, {**r, "lr": 0.1, "stuck_at_chance": False, "curve": [(5.0, 0.95)]}],
                     "relu", (0.0, 0.1), 0, 0.25) == 0.1  # fmt: skip


def test_ablation_table_arithmetic():
    results = {
        "baseline": [{"top1": 0.30, "top5": 0.10}, {"top1": 0.32, "top5": 0.12}],
        "lrn": [{"top1": 0.33, "top5": 0.11}, {"top1": 0.35, "top5": 0.13}],
    }
    rows = {r["variant"]: r for r in E.ablation_table(results)}
    assert rows["baseline"]["top1_error"] == pytest.approx(31.0)
    assert rows["baseline"]["top1_std"] == pytest.approx(1.41421356, rel=1e-6)
    assert rows["without lrn"]["delta_top1"] == pytest.approx(3.0)
    assert rows["without lrn"]["delta_top5"] == pytest.approx(1.0)
    assert "+1.4" in rows["without lrn"]["paper"]
    assert rows["without lrn"]["seed_deltas_top1"] == pytest.approx([3.0, 3.0])
    assert rows["without lrn"]["sign_agrees"] == "yes"  # the paper: removing LRN hurts
    results["lrn"][1]["top1"] = 0.31  # seed 1 now gains from removing it
    assert E.ablation_table(results)[1]["sign_agrees"] == "mixed"
    results["lrn"][0]["top1"] = 0.29
    assert E.ablation_table(results)[1]["sign_agrees"] == "no"
    results["dropout"] = [{"top1": 0.40, "top5": 0.1}]  # one seed is no verdict
    assert E.ablation_table(results)[2]["sign_agrees"] == ""
    results["relu"] = [{"top1": 0.5, "top5": 0.1}] * 2  # no final-error claim to agree with
    assert E.ablation_table(results)[3]["sign_agrees"] == ""


def _fake_ablation_training(monkeypatch, fake_train) -> None:
    """Ablations with ``fake_train`` for training, on a stub prepared folder with a val split."""
    import alexnet.data.dataset as D
    import alexnet.engine.train as T

    class Stub:
        def __init__(self, root):
            pass

        def splits(self):
            return ["train", "val"]

    monkeypatch.setattr(T, "train", fake_train)
    monkeypatch.setattr(D, "Prepared", Stub)
    monkeypatch.setattr(E, "_resolve_data", lambda d: d)


def test_ablation_is_seed_major_uses_the_last_epoch_and_keeps_a_partial_table(
    monkeypatch, tmp_path
):

    made = []
    err = {"baseline": 0.30, "lrn": 0.32, "dropout": 0.35}

    def fake_train(cfg, run_dir, resume, force, quiet):
        variant, seed = run_dir.parent.name, int(run_dir.name[4:])
        if len(made) == 4:
            raise KeyboardInterrupt  # the experiment is stopped during its fifth run
        made.append((variant, seed))
        run_dir.mkdir(parents=True)
        summary = {"best_val_top1_error": 0.01, "best_val_top5_error": 0.01,
                   "final_val_top1_error": err[variant] + seed / 100, "final_val_top5_error": 0.1}  # fmt: skip
        (run_dir / "summary.json").write_text(json.dumps(summary))

    _fake_ablation_training(monkeypatch, fake_train)
    with pytest.raises(KeyboardInterrupt):
        E.ablation(str(tmp_path), str(tmp_path / "ab"), ["lrn", "dropout"], "cifar10", seeds=2, progress=False)  # fmt: skip
    assert made == [("baseline", 0), ("lrn", 0), ("dropout", 0), ("baseline", 1)]
    partial = {
        r["variant"]: r for r in json.loads((tmp_path / "ab" / "ablation.json").read_text())["rows"]
    }
    assert partial["baseline"]["n"] == 2 and partial["without lrn"]["n"] == 1
    assert partial["baseline"]["top1_error"] == pytest.approx(30.5)  # last epoch, not best
    # Part-way, a variant is compared with the baseline's same seeds only.
    assert partial["without dropout"]["delta_top1"] == pytest.approx(35.0 - 30.0)
    made.clear()
    table = E.ablation(str(tmp_path), str(tmp_path / "ab"), ["lrn", "dropout"], "cifar10", seeds=2, table_only=True)  # fmt: skip
    assert made == [] and [r["n"] for r in table["rows"]] == [2, 1, 1]  # the table, no training
    report = E.ablation(str(tmp_path), str(tmp_path / "ab"), ["lrn", "dropout"], "cifar10", seeds=2, progress=False)  # fmt: skip
    assert made == [("lrn", 1), ("dropout", 1)]  # resumed where it stopped
    assert all(r["n"] == 2 for r in report["rows"])
    rows = {r["variant"]: r for r in report["rows"]}
    assert rows["without dropout"]["delta_top1"] == pytest.approx(35.5 - 30.5)
    assert "against the baseline's same seeds" in E.format_ablation(report)
    md = (tmp_path / "ab" / "ablation.md").read_text()
    assert "| without dropout | 35.50 ± 0.71 |" in md and "+5.00 (+5.00, +5.00)" in md
    assert md.count("| yes |") == 2


def test_ablation_seeds_run_apart_and_gather_into_one_table(monkeypatch, tmp_path):
    made = []

    def fake_train(cfg, run_dir, resume, force, quiet):
        variant, seed = run_dir.parent.name, int(run_dir.name[4:])
        assert cfg.run.seed == seed
        made.append((run_dir.parent.parent.name, variant, seed))
        run_dir.mkdir(parents=True)
        top1 = {"baseline": 0.30, "lrn": 0.33}[variant] + seed / 100
        summary = {"final_val_top1_error": top1, "final_val_top5_error": 0.1}
        (run_dir / "summary.json").write_text(json.dumps(summary))

    _fake_ablation_training(monkeypatch, fake_train)
    # Two machines, one seed each: the second runs only seed 1.
    E.ablation(str(tmp_path), str(tmp_path / "m0"), ["lrn"], "cifar10", seeds=1, progress=False)  # fmt: skip
    one = E.ablation(str(tmp_path), str(tmp_path / "m1"), ["lrn"], "cifar10", seeds=1, first_seed=1, progress=False)  # fmt: skip
    assert made == [
        ("m0", "baseline", 0),
        ("m0", "lrn", 0),
        ("m1", "baseline", 1),
        ("m1", "lrn", 1),
    ]
    assert one["seed_ids"] == [1] and [r["n"] for r in one["rows"]] == [1, 1]
    assert "finished of the 1 asked for (1)" in (tmp_path / "m1" / "ablation.md").read_text()
    for variant in ("baseline", "lrn"):  # gathered by copying the seed folders
        shutil.copytree(tmp_path / "m1" / variant / "seed1", tmp_path / "m0" / variant / "seed1")
    made.clear()
    both = E.ablation(str(tmp_path), str(tmp_path / "m0"), ["lrn"], "cifar10", seeds=2, table_only=True)  # fmt: skip
    assert made == [] and [r["n"] for r in both["rows"]] == [2, 2]
    assert both["rows"][1]["seed_deltas_top1"] == pytest.approx([3.0, 3.0])
    with pytest.raises(ValueError, match="--first-seed"):
        E.ablation(str(tmp_path), str(tmp_path / "m2"), ["lrn"], "cifar10", first_seed=-1)


def test_a_diverged_variant_is_recorded_and_the_ablation_goes_on(monkeypatch, tmp_path, capsys):
    import alexnet.engine.train as T

    made = []

    def fake_train(cfg, run_dir, resume, force, quiet):
        variant, seed = run_dir.parent.name, int(run_dir.name[4:])
        made.append((variant, seed))
        run_dir.mkdir(parents=True)
        if variant == "lrn" and seed == 0:
            raise T.TrainingDiverged("loss became nan at epoch 2, step 7")
        top1 = {"baseline": 0.30, "lrn": 0.33, "dropout": 0.35}[variant]
        summary = {"final_val_top1_error": top1, "final_val_top5_error": 0.1}
        (run_dir / "summary.json").write_text(json.dumps(summary))

    _fake_ablation_training(monkeypatch, fake_train)
    report = E.ablation(str(tmp_path), str(tmp_path / "ab"), ["lrn", "dropout"], "cifar10", seeds=2)  # fmt: skip
    assert len(made) == 6  # every run after the diverged one still ran
    assert (
        "lrn, seed 0 diverged: loss became nan at epoch 2, step 7 (recorded in"
        in capsys.readouterr().out
    )
    rows = {r["variant"]: r for r in report["rows"]}
    assert rows["without lrn"]["n"] == 1 and rows["without lrn"]["diverged"] == 1
    assert rows["without lrn"]["top1_error"] == pytest.approx(33.0)
    assert rows["without lrn"]["delta_top1"] == pytest.approx(3.0)  # over the seed it has
    assert "(1 diverged)" in E.format_ablation(report)
    made.clear()
    E.ablation(str(tmp_path), str(tmp_path / "ab"), ["lrn", "dropout"], "cifar10", seeds=2, progress=False)  # fmt: skip
    why = json.loads((tmp_path / "ab" / "lrn" / "seed0" / "diverged.json").read_text())["why"]
    assert why.startswith("loss became nan")
    assert made == []  # a diverged run is a result: not retried on resume
    results = {"baseline": [{"seed": 0, "top1": 0.3, "top5": 0.1}], "lrn": [{"seed": 0, "diverged": True}]}  # fmt: skip
    report = {"rows": E.ablation_table(results), "seeds": 1, "preset": "p", "data": "d"}
    assert report["rows"][1]["top1_error"] is None and report["rows"][1]["diverged"] == 1
    assert "n/a" in E.format_ablation(report)
    assert "| without lrn | n/a | n/a | n/a | n/a | 0 (+1 diverged) |" in E.ablation_markdown(
        report
    )


def test_a_stopped_ablation_says_how_to_resume_and_resumes(monkeypatch, tmp_path, capsys):
    before = signal.getsignal(signal.SIGTERM)
    import alexnet.engine.train as T

    made = []

    def fake_train(cfg, run_dir, resume, force, quiet):
        made.append(run_dir.parent.name)
        run_dir.mkdir(parents=True, exist_ok=True)
        if run_dir.parent.name == "lrn" and len(made) == 2:
            raise T.TrainingStopped("stopped by SIGTERM", T.EXIT_PREEMPTED)
        summary = {"final_val_top1_error": 0.3, "final_val_top5_error": 0.1}
        (run_dir / "summary.json").write_text(json.dumps(summary))

    _fake_ablation_training(monkeypatch, fake_train)
    args = ["experiment", "ablation", "--data", str(tmp_path), "--preset", "cifar10", "--ablate", "lrn", "--out", str(tmp_path / "ab")]  # fmt: skip
    assert main(args) == T.EXIT_PREEMPTED
    err = capsys.readouterr().err
    assert "stopped by SIGTERM" in err and "rerun the same command to resume" in err
    assert "Traceback" not in err
    assert not (tmp_path / "ab" / "lrn" / "seed0" / "diverged.json").exists()  # not a result
    assert main(args) == 0 and made == ["baseline", "lrn", "lrn"]  # the stopped run again

    def terminated(*a, **k):  # SIGTERM outside a run (no training handler): still clean
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(E, "ablation", terminated)
    assert main(args) == T.EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert "interrupted; finished runs" in err and "rerun the same command to resume" in err
    assert signal.getsignal(signal.SIGTERM) == before  # restored

    def diverges(*a, **k):
        raise T.TrainingDiverged("loss became nan at epoch 1, step 3")

    monkeypatch.setattr(E, "ablation", diverges)  # one escaping: no resume hint
    assert main(args) == 1
    assert "resume" not in capsys.readouterr().err


def test_experiments_need_a_seed(capsys):
    with pytest.raises(SystemExit) as e:
        main(["experiment", "relu-vs-tanh", "--data", "cifar10", "--seeds", "0"])
    assert e.value.code == 2 and "--seeds" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["experiment", "ablation", "--data", "cifar10", "--first-seed", "-1"])
    assert e.value.code == 2 and "--first-seed: must be >= 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="at least one seed"):
        E.relu_vs_tanh("cifar10", "unused", seeds=(), progress=False)


def test_four_layer_cnn_shapes_and_the_authors_init():
    import torch

    for c, size in ((3, 32), (1, 28)):
        net = E.four_layer_cnn(c, 10, size, "tanh")
        assert net(torch.randn(2, c, size, size)).shape == (2, 10)
    torch.manual_seed(0)
    net = E.four_layer_cnn(3, 10, 32, "relu", "cuda-convnet")
    weighted = [m for m in net if hasattr(m, "weight")]
    stds = [float(m.weight.detach().std()) for m in weighted]
    assert stds == pytest.approx([1e-4, 1e-2, 1e-2, 1e-2], rel=0.1)
    assert all(float(m.bias.detach().abs().max()) == 0 for m in weighted)
    with pytest.raises(ValueError, match="unknown init"):
        E.four_layer_cnn(3, 10, 32, "relu", "xavier")


def test_relu_vs_tanh_refuses_to_mix_inits(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "runs.json").write_text(json.dumps([{"activation": "relu", "lr": 0.01, "seed": 0}]))
    with pytest.raises(ValueError, match="init 'pytorch', not 'cuda-convnet'"):
        E.relu_vs_tanh(str(tmp_path), str(out), init="cuda-convnet", progress=False)


def _valid_image(path, min_side=100):
    with Image.open(path) as im:
        im.load()
        assert min(im.size) >= min_side, im.size
        return im.size


def test_figures_are_valid_images(run, tmp_path):
    w = str(run / "run" / "model.safetensors")
    files = []
    files += V.filters(w, str(tmp_path / "filters"))
    files += V.curves(str(run / "run"), str(tmp_path / "curves"))
    files += V.predictions(w, str(run / "data"), str(tmp_path / "pred"), count=4)
    files += V.neighbors(w, str(run / "data"), str(tmp_path / "nn"), count=3)
    files += V.confusion(w, str(run / "data"), str(tmp_path / "conf"))
    for f in files:
        if f.endswith(".png"):
            _valid_image(f)
        else:
            assert f.endswith(".svg") and "<svg" in Path(f).read_text()[:2000]
    assert len(files) == 10


def test_visualize_cli_needs_data(run, capsys):
    assert main(["visualize", "predictions", str(run / "run" / "model.safetensors")]) == 2
    assert "needs --data" in capsys.readouterr().err


def test_report_has_every_section_and_its_images_load(run):
    r = build_report(str(run / "run"))
    page = Path(r["html"]).read_text()
    for name in SECTIONS:
        assert f">{name}</h2>" in page, name
    images = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(images) == 4  # curves, filters, predictions, neighbours
    for data in images:
        with Image.open(io.BytesIO(base64.b64decode(data))) as im:
            im.load()
    # The result leads, with its protocol and what ran; the config is folded away last.
    assert page.index(">Result</h2>") < page.index(">Training curves</h2>")
    assert page.index("<details>") > page.index(">All metrics</h2>")
    summary = json.loads((run / "run" / "summary.json").read_text())
    accuracy = f"{100 * (1 - summary['best_val_top1_error']):.2f}% top-1 accuracy on the validation split (centre crop)"
    assert accuracy in page and "fp32" in page.split(">Training curves<")[0]
    md = Path(r["markdown"]).read_text()
    assert md.index("## Result") < md.index("## Training curves") < md.index("## Configuration")
    assert "## All metrics" in md and "best_val_top1_error" in md
    # What ran, resolved: the fixture pins fp32 and PyTorch's conv kernels.
    assert "| precision | fp32 |" in md and "| eval_precision | fp32 |" in md
    assert "| conv impl: conv2 | direct (" in md and "| loader_workers | 0 |" in md


def test_relu_vs_tanh_runs_and_resumes(run, tmp_path):
    out = tmp_path / "rt"
    r = E.relu_vs_tanh(
        str(run / "data"), str(out), epochs=1, lrs=(0.01,), points=2, batch=16, progress=False
    )
    assert set(r["best"]) == {"relu", "tanh"}
    for f in ("relu_vs_tanh.json", "curves.csv", "runs.json", "figure1.png", "figure1.svg"):
        assert (out / f).is_file(), f
    runs = json.loads((out / "runs.json").read_text())
    assert len(runs) == 2 and all(len(x["curve"]) == 2 for x in runs)
    stamp = (out / "runs.json").stat().st_mtime_ns
    E.relu_vs_tanh(
        str(run / "data"), str(out), epochs=1, lrs=(0.01,), points=2, batch=16, progress=False
    )
    assert (out / "runs.json").stat().st_mtime_ns == stamp  # nothing retrained


def test_ablation_runs_and_resumes(run, tmp_path, capsys):
    args = ["experiment", "ablation", "--data", str(run / "data"), "--out", str(tmp_path / "ab"), "--ablate", "lrn,dropout",
            "--preset", "fashion-mnist", "--epochs", "1", "--set", "model.width=0.25", "--set", "model.fc_width=64",
            "--set", "run.batch_size=16", "--set", "data.workers=0", "--set", "run.precision=fp32",
            "--set", "model.conv_impl=direct", "--set", "run.threads=2"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "without lrn" in out and "without dropout" in out and "+1.4 / +1.2" in out
    report = json.loads((tmp_path / "ab" / "ablation.json").read_text())
    assert [r["variant"] for r in report["rows"]] == ["baseline", "without lrn", "without dropout"]
    stamp = (tmp_path / "ab" / "lrn" / "seed0" / "summary.json").stat().st_mtime_ns
    assert main(args) == 0
    assert (tmp_path / "ab" / "lrn" / "seed0" / "summary.json").stat().st_mtime_ns == stamp
    assert main([*args[:-2], "--ablate", "nonsense"]) == 2
    capsys.readouterr()
    # The recipe changed under a running experiment (an edited preset, another --set): refused.
    assert main([*args, "--set", "optim.weight_decay=0.001"]) == 2
    err = capsys.readouterr().err
    assert "optim.weight_decay was 0.0005, now 0.001" in err and "another --out" in err
    # How it runs may change (threads, workers, device), and so may the data path's spelling.
    relative = os.path.relpath(run / "data")
    same = [*args, "--set", "run.threads=1", "--set", "data.workers=1", "--set", "run.device=cpu"]
    assert main([*same[:2], "--data", relative, *same[4:]]) == 0
    # Folders gathered from elsewhere are checked too: every seed, every variant.
    import yaml

    ab = tmp_path / "ab"
    shutil.copytree(ab / "baseline" / "seed0", ab / "baseline" / "seed1")
    cfg = yaml.safe_load((ab / "baseline" / "seed1" / "config.yaml").read_text())
    cfg["optim"]["weight_decay"] = 0.002
    (ab / "baseline" / "seed1" / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main([*args, "--seeds", "2", "--table-only"]) == 2
    err = capsys.readouterr().err
    assert "baseline/seed1/config.yaml" in err and "weight_decay was 0.002" in err
    shutil.rmtree(ab / "baseline" / "seed1")
    shutil.rmtree(ab / "dropout" / "seed0")
    shutil.copytree(ab / "lrn" / "seed0", ab / "dropout" / "seed0")  # the wrong variant's run
    assert main([*args, "--table-only"]) == 2
    assert "dropout/seed0/config.yaml" in capsys.readouterr().err


def test_an_ablation_resumes_where_the_data_shaped_the_model(run, tmp_path, capsys):
    # The saved baseline config holds what the data decided (classes, channels, crop): a
    # preset that leaves them to the data is not a changed recipe.
    args = ["experiment", "ablation", "--data", str(run / "data"), "--out", str(tmp_path / "ab"),
            "--ablate", "dropout", "--preset", "imagenet-paper", "--epochs", "1", "--limit", "32",
            "--set", "model.width=0.125", "--set", "model.fc_width=32", "--set", "run.batch_size=16",
            "--set", "data.workers=0", "--set", "run.precision=fp32", "--set", "model.variant=small", "--set", "data.crop=null",
            "--set", "run.threads=2", "--set", "model.conv_impl=direct"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    assert main(args) == 0, capsys.readouterr().err


@pytest.mark.skipif(
    not __import__("shutil").which("chromium"), reason="Debian's chromium is not installed"
)
def test_report_renders_in_headless_chromium(run, tmp_path):
    import subprocess

    import numpy as np

    r = build_report(str(run / "run"))
    shot = tmp_path / "report.png"
    script = Path(__file__).resolve().parents[1] / "scripts" / "check-report.sh"
    done = subprocess.run(
        ["bash", str(script), r["html"], str(shot)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("L"), dtype=np.float32)
    assert pixels.shape[1] >= 1000
    # Text and figures, not a blank page: many distinct grey levels and dark pixels.
    assert pixels.std() > 10 and (pixels < 100).mean() > 0.005


def test_curves_mark_only_the_schedules_lr_drops():
    rows = [{"epoch": e, "lr": lr} for e, lr in enumerate([0.1, 0.05, 0.02, 0.02, 0.002], 1)]
    assert V.lr_drops(rows, "onecycle") == [] and V.lr_drops(rows, "cosine") == []
    assert [(e, round(f, 3)) for e, f in V.lr_drops(rows, "plateau")] == [
        (2, 2.0), (3, 2.5), (5, 10.0)
    ]  # fmt: skip


def test_report_of_an_unfinished_run_still_leads_with_its_result(run, tmp_path):
    import shutil

    copy = tmp_path / "stopped"
    shutil.copytree(run / "run", copy)
    (copy / "summary.json").unlink()  # stopped, or still running
    page = Path(build_report(str(copy))["html"]).read_text()
    head = page.split(">Training curves<")[0]
    assert "top-1 accuracy on the validation split" in head and "unfinished" in head
    assert "fp32 training" in head
