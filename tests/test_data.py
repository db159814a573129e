import csv
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet.data import transforms as T
from alexnet.data.dataset import EpochSampler, LoaderSpec, Prepared, make_loader
from alexnet.data.images import load_image
from alexnet.data.prepare import PixelStats, format_summary, prepare
from alexnet.data.sources import DataError, folder_source, open_source
from helpers import (
    make_cifar10,
    make_fashion_mnist,
    make_folder_dataset,
    make_messy_dataset,
    make_split_folders,
    photo,
    tiny_filesystem,
)

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-samples"


# ---------------------------------------------------------------- decoding real-world files


def test_messy_files_are_reported_not_fatal(tmp_path):
    src = tmp_path / "src"
    expected = make_messy_dataset(src)
    out = prepare(str(src), tmp_path / "out", workers=2, val_fraction=0.0, progress=False)
    with open(tmp_path / "out" / "report.csv") as f:
        rows = list(csv.DictReader(f))
    reasons = {Path(r["path"]).name: r["reason"] for r in rows}
    for name, fragment in expected.items():
        assert fragment in reasons[name], (name, reasons.get(name))
    assert any("empty class folder" in r["reason"] for r in rows)
    data = Prepared(tmp_path / "out")
    assert data.classes == ["bad", "empty", "good"]
    # good: 4 photos + cmyk + gray + png-as-jpeg + tiny + alpha png + rotated; bad: fine.JPEG
    assert out["splits"]["train"]["count"] == 11
    assert out["skipped"] == 4
    split = data.split("train")
    for i in range(len(split)):
        assert split.image(i).shape == (256, 256, 3)


def test_max_pixels_is_the_one_limit_raised_or_lowered(tmp_path, monkeypatch):
    # Pillow's own bomb check (a warning, an error at twice its limit) must not stand in
    # for --max-pixels: a larger limit lets a large photo through, silently; a smaller one
    # refuses by the header, naming the option.
    import warnings

    from PIL import Image

    from alexnet.data.images import ImageError, probe

    path = tmp_path / "photo.jpg"
    photo(40, 30, seed=1).save(path, quality=90)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # as if the photo were 2.4x Pillow's
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(path, None, max_pixels=5000).shape == (30, 40, 3)
        assert probe(path) == (40, 30, "RGB")
    assert Image.MAX_IMAGE_PIXELS == 500  # given back
    with pytest.raises(ImageError, match=r"40x30 pixels is over the limit of 1000"):
        load_image(path, None, max_pixels=1000)


def test_load_image_conversions(tmp_path):
    photo(120, 90, seed=1, mode="CMYK").save(tmp_path / "c.jpg")
    photo(90, 120, seed=2, mode="L").save(tmp_path / "g.jpg")
    photo(64, 64, seed=3).save(tmp_path / "p.JPEG", format="PNG")
    for name in ("c.jpg", "g.jpg", "p.JPEG"):
        img = load_image(tmp_path / name)
        assert img.shape == (256, 256, 3) and img.dtype == np.uint8


def test_exif_orientation_is_applied(tmp_path):
    # Left half dark, right half bright; orientation 6 rotates 90 degrees clockwise, so
    # the dark half ends up on top.
    arr = np.zeros((50, 100, 3), np.uint8)
    arr[:, 50:] = 250
    from PIL import Image

    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    img = load_image(tmp_path / "r.jpg", size=64).astype(float)
    assert img[:20].mean() < 60 and img[-20:].mean() > 190


def test_shorter_side_and_central_crop(tmp_path):
    # 512x256 with a bright centre band 128 px wide: after resizing to 512x256 nothing
    # changes, and the central 256 crop is exactly the middle.
    arr = np.zeros((256, 512, 3), np.uint8)
    arr[:, 128:384] = 200
    from PIL import Image

    Image.fromarray(arr).save(tmp_path / "w.png")
    img = load_image(tmp_path / "w.png")
    assert img.shape == (256, 256, 3)
    assert img.min() == 200


# ---------------------------------------------------------------- statistics


def test_mean_image_and_pca_match_numpy(tmp_path):
    make_folder_dataset(tmp_path / "src", classes=2, per_class=5)
    prepare(str(tmp_path / "src"), tmp_path / "out", workers=1, val_fraction=0.2, progress=False)
    data = Prepared(tmp_path / "out")
    split = data.split("train")
    pixels = np.stack([split.image(i) for i in range(len(split))]).astype(np.float64)
    # Statistics are accumulated from the crops before JPEG encoding: allow its error.
    assert np.abs(data.mean - pixels.mean(0)).mean() < 2.0
    flat = pixels.reshape(-1, 3) / 255
    vals, vecs = np.linalg.eigh(np.cov(flat, rowvar=False, bias=True))
    assert np.allclose(np.sort(data.eigenvalues)[::-1], vals[::-1], rtol=0.05, atol=1e-5)
    top = data.eigenvectors[:, 0]
    assert abs(abs(top @ vecs[:, -1]) - 1) < 1e-2


def test_pixel_stats_exact_against_numpy():
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 256, (7, 5, 4, 3), dtype=np.uint8) for _ in range(3)]
    stats = PixelStats.empty((5, 4, 3))
    for b in batches:
        part = PixelStats.empty((5, 4, 3))
        part.add(b)
        stats.merge(part)
    allpix = np.concatenate(batches).astype(np.float64)
    assert np.allclose(stats.mean_image(), allpix.mean(0), atol=1e-4)
    cov = np.cov(allpix.reshape(-1, 3) / 255, rowvar=False, bias=True)
    assert np.allclose(stats.covariance(), cov, atol=1e-12)
    vals, vecs = stats.pca()
    assert np.all(np.diff(vals) <= 0)
    assert np.allclose(cov @ vecs, vecs * vals, atol=1e-10)


# ---------------------------------------------------------------- sources


def test_fashion_mnist_idx(tmp_path):
    src = make_fashion_mnist(tmp_path / "fm")
    prepare(str(src), tmp_path / "out", progress=False)
    data = Prepared(tmp_path / "out")
    assert data.image_size == (28, 28, 1) and data.kind == "raw"
    assert len(data.split("train")) == 64 and len(data.split("val")) == 32
    assert data.names[0] == "T-shirt/top"


def test_fashion_mnist_missing_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        open_source(str(tmp_path), kind="fashion-mnist", download=False)


def test_truncated_idx_is_a_clear_error(tmp_path):
    src = make_fashion_mnist(tmp_path / "fm")
    import gzip

    p = src / "train-images-idx3-ubyte.gz"
    with gzip.open(p) as f:
        raw = f.read()
    with gzip.open(p, "wb") as f:
        f.write(raw[:1000])
    with pytest.raises(DataError, match="truncated"):
        prepare(str(src), tmp_path / "out", progress=False)


def test_cifar10_batches(tmp_path):
    src = make_cifar10(tmp_path / "c")
    prepare(str(src), tmp_path / "out", progress=False)
    data = Prepared(tmp_path / "out")
    assert data.image_size == (32, 32, 3)
    assert len(data.split("train")) == 100 and len(data.split("val")) == 20
    assert data.names[3] == "cat"


def test_cifar10_is_never_downloaded_into_a_folder_of_other_files(tmp_path):
    src = make_folder_dataset(tmp_path / "photos", classes=2, per_class=2)
    before = sorted(p.name for p in src.iterdir())
    with pytest.raises(DataError, match="leave out --kind cifar10"):
        open_source(str(src), kind="cifar10")  # download allowed, but not here
    assert sorted(p.name for p in src.iterdir()) == before
    part = make_cifar10(tmp_path / "c") / "cifar-10-batches-py"
    (part / "test_batch").unlink()  # found as CIFAR-10 (data_batch_1), but incomplete
    with pytest.raises(DataError, match=r"only part of CIFAR-10's batches \(no test_batch"):
        open_source(str(tmp_path / "c"))
    (tmp_path / "notes.txt").write_text("mine")  # a file, not a folder: said so, no download
    for kind, name in (("cifar10", "CIFAR-10"), ("fashion-mnist", "Fashion-MNIST")):
        with pytest.raises(
            DataError, match=f"is a file, not a folder: pass the folder that holds {name}"
        ):
            open_source(str(tmp_path / "notes.txt"), kind=kind)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_cifar10_refuses_foreign_pickles(tmp_path):
    src = make_cifar10(tmp_path / "c")
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(src / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
        pickle.dump(Evil(), f)
    with pytest.raises(DataError, match="refusing"):
        prepare(str(src), tmp_path / "out", progress=False)


def test_stratified_split_is_reproducible(tmp_path):
    make_folder_dataset(tmp_path, classes=3, per_class=10)
    a = folder_source(tmp_path, val_fraction=0.2, seed=1)
    b = folder_source(tmp_path, val_fraction=0.2, seed=1)
    c = folder_source(tmp_path, val_fraction=0.2, seed=2)
    assert a.splits["val"].paths == b.splits["val"].paths != c.splits["val"].paths
    assert sorted(a.splits["val"].labels) == [0, 0, 1, 1, 2, 2]
    assert not set(a.splits["val"].paths) & set(a.splits["train"].paths)


def test_imagenet_flat_val_with_csv(tmp_path):
    wnids = ["n01440764", "n01443537"]
    for w in wnids:
        d = tmp_path / "train" / w
        d.mkdir(parents=True)
        for i in range(2):
            photo(50, 40, seed=i).save(d / f"{w}_{i}.JPEG")
    val = tmp_path / "val"
    val.mkdir()
    rows = ["ImageId,PredictionString"]
    for i in range(4):
        name = f"ILSVRC2012_val_{i + 1:08d}"
        photo(50, 40, seed=10 + i).save(val / f"{name}.JPEG")
        rows.append(f"{name},{wnids[i % 2]} 1 2 3 4")
    (tmp_path / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    src = open_source(str(tmp_path))
    assert src.kind == "imagenet" and src.names == ["tench", "goldfish"]
    assert src.splits["val"].labels == [0, 1, 0, 1]


def _devkit_tree(root, val_images, ground_truth):
    """Two ImageNet classes in train/, flat val/ images ILSVRC2012_val_<i+1> for i in
    ``val_images``, and the devkit's ground truth with its wnid order beside it."""
    for w in ("n01440764", "n01443537"):
        (root / "train" / w).mkdir(parents=True)
        photo(50, 40, seed=0).save(root / "train" / w / "a.JPEG")
    val = root / "val"
    val.mkdir()
    for i in val_images:
        photo(50, 40, seed=i).save(val / f"ILSVRC2012_val_{i + 1:08d}.JPEG")
    # The devkit's ID order differs from sorted wnid order: ID 1 = n01443537 here.
    (root / "wnids.txt").write_text("n01443537\nn01440764\n")
    (root / "ILSVRC2012_validation_ground_truth.txt").write_text(ground_truth)
    return val


def test_imagenet_devkit_ground_truth(tmp_path):
    _devkit_tree(tmp_path, range(3), "1\n2\n1\n")
    src = open_source(str(tmp_path))
    assert src.splits["val"].labels == [1, 0, 1]


def test_broken_links_in_flat_imagenet_folders_are_reported_and_keep_the_labels(tmp_path):
    """A broken val link still holds its place in the devkit's file-name order (the labels of
    the others stay aligned) and is reported; so is one in a flat <wnid>_<name> folder."""
    val = _devkit_tree(tmp_path, (0, 2), "1\n2\n2\n")
    (val / "ILSVRC2012_val_00000002.JPEG").symlink_to(tmp_path / "gone.JPEG")
    src = open_source(str(tmp_path))
    assert [p.name for p in src.splits["val"].paths] == [
        "ILSVRC2012_val_00000001.JPEG",
        "ILSVRC2012_val_00000003.JPEG",
    ]
    assert src.splits["val"].labels == [1, 0]  # IDs 1 and 2 of files 1 and 3
    assert [why for path, why in src.problems if path.endswith("_00000002.JPEG")] == [
        f"broken symlink (to {tmp_path / 'gone.JPEG'}); skipped"
    ]

    flat = tmp_path / "flat"
    flat.mkdir()
    photo(50, 40, seed=0).save(flat / "n01440764_1.JPEG")
    (flat / "n01443537_2.JPEG").symlink_to(tmp_path / "gone.JPEG")
    (flat / "._n01440764_1.JPEG").write_bytes(b"macOS metadata")  # hidden: passed over
    (flat / ".ipynb_checkpoints").mkdir()  # a hidden folder keeps the folder flat
    src = open_source(str(flat))
    assert src.kind == "imagenet" and src.classes == ["n01440764"]
    assert [Path(p).name for p, _ in src.problems] == ["n01443537_2.JPEG"]


def test_missing_directory_is_clear(tmp_path):
    with pytest.raises(DataError, match="not found"):
        open_source(str(tmp_path / "nope"))
    with pytest.raises(DataError, match=r"no meta\.json"):
        Prepared(tmp_path)
    # A raw dataset folder: prepare it into a new directory, never into itself.
    with pytest.raises(DataError, match=rf"`alexnet prepare {re.escape(str(tmp_path))} DST`"):
        Prepared(tmp_path)


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="shared ImageNet samples not present")
def test_shared_imagenet_samples(tmp_path):
    import shutil

    src = tmp_path / "src"
    src.mkdir()
    for f in sorted(SAMPLES.iterdir())[:24]:
        shutil.copy(f, src / f.name)
    out = prepare(str(src), tmp_path / "out", workers=2, progress=False)
    data = Prepared(tmp_path / "out")
    assert out["written"] == 24 and data.kind == "jpeg"
    assert data.names[0] == "tench"
    assert data.split("train").image(3).shape == (256, 256, 3)


# ---------------------------------------------------------------- sampling and views


def test_distributed_splits_are_disjoint_and_cover_once():
    n, world = 103, 4
    seen = []
    for rank in range(world):
        s = EpochSampler(n, 8, seed=3, shuffle=True, drop_last=False, rank=rank, world_size=world)
        s.set_epoch(2)
        seen.extend(int(i) for b in s for i in b.indices)
    assert sorted(seen) == list(range(n))


def test_rank_batches_union_to_the_single_process_batch():
    kw = dict(seed=5, crop_range=(32, 32), flip=True, pca_std=0.1)
    single = EpochSampler(100, 8, **kw).plan()
    ranks = [EpochSampler(100, 4, rank=r, world_size=2, **kw).plan() for r in range(2)]
    for k in range(len(ranks[0])):
        union = sorted(
            zip(
                *[
                    np.concatenate([ranks[r][k].indices for r in range(2)]),
                    np.concatenate([ranks[r][k].ys for r in range(2)]),
                ],
                strict=True,
            )
        )
        assert union == sorted(zip(single[k].indices, single[k].ys, strict=True))


def test_epochs_differ_and_repeat_exactly():
    s = EpochSampler(50, 10, seed=1)
    s.set_epoch(0)
    a = [b.indices.copy() for b in s]
    s.set_epoch(1)
    b = [x.indices.copy() for x in s]
    s.set_epoch(0)
    c = [x.indices.copy() for x in s]
    assert not all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    assert sorted(np.concatenate(a).tolist()) == list(range(50))
    s.set_epoch(0, start_batch=2)
    assert np.array_equal(next(iter(s)).indices, a[2])


def test_ten_crop_geometry():
    x = torch.arange(2 * 8 * 8 * 1).view(2, 8, 8, 1)
    views = T.ten_crop(x, 6)
    assert views.shape == (10, 2, 6, 6, 1)
    assert torch.equal(views[0], x[:, :6, :6])  # top-left
    assert torch.equal(views[3], x[:, 2:, 2:])  # bottom-right
    assert torch.equal(views[4], x[:, 1:7, 1:7])  # centre
    for k in range(5):
        assert torch.equal(views[5 + k], views[k].flip(2))  # mirrors


def test_crop_batch_and_mean_crops_agree():
    torch.manual_seed(0)
    x = torch.randint(0, 255, (4, 10, 10, 3), dtype=torch.uint8)
    mean = torch.rand(10, 10, 3) * 255
    ys, xs = torch.tensor([0, 1, 2, 3]), torch.tensor([3, 2, 1, 0])
    flips = torch.tensor([False, True, False, True])
    crops = T.crop_batch(x, ys, xs, flips, 7)
    assert torch.equal(crops[1], x[1, 1:8, 2:9].flip(1))
    offset = torch.randn(4, 3)
    got = T.subtract_mean_crops(crops, mean, ys, xs, flips, rgb_offset=offset)
    expect = (
        crops.float()
        - T.crop_batch(mean.expand(4, 10, 10, 3), ys, xs, flips, 7)
        + offset.view(4, 1, 1, 3)
    )
    assert torch.allclose(got, expect, atol=1e-4)


def test_pca_offsets_formula():
    vals = torch.tensor([0.2, 0.02, 0.004])
    vecs = torch.linalg.qr(torch.randn(3, 3))[0]
    alphas = torch.randn(5, 3) * 0.1
    manual = torch.stack([vecs @ (a * vals.sqrt()) for a in alphas])
    assert torch.allclose(T.pca_offsets(alphas, vals, vecs), manual, atol=1e-6)


def test_pca_noise_has_the_authors_strength_on_known_data():
    # Pixels spread along known colour directions with standard deviations of 30, 8 and 2
    # grey levels: prepare's PCA finds them, and the noise along each direction has a
    # standard deviation of 0.1 x those (3.0 / 0.8 / 0.2 levels), as in the authors' code
    # (alpha times the standard deviation), not alpha times the eigenvalue on a [0, 1]
    # scale (0.35 / 0.025 / 0.0016 levels).
    g = np.random.default_rng(0)
    dirs = np.linalg.qr(g.standard_normal((3, 3)))[0]
    stds = np.array([30.0, 8.0, 2.0])
    z = g.standard_normal((200_000, 3)) * stds
    pixels = np.clip(np.rint(128 + z @ dirs.T), 0, 255).astype(np.uint8)
    stats = PixelStats.empty((1, 1, 3))
    stats.add(pixels.reshape(-1, 1, 1, 3))
    vals, vecs = stats.pca()
    alphas = torch.from_numpy(g.standard_normal((100_000, 3)) * 0.1).float()
    offsets = 255 * T.pca_offsets(
        alphas, torch.from_numpy(vals).float(), torch.from_numpy(vecs).float()
    )
    along = offsets.numpy() @ dirs  # the noise along each known direction, in grey levels
    np.testing.assert_allclose(along.std(axis=0), 0.1 * stds, rtol=0.03)


@pytest.fixture(scope="module")
def prepared_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep")
    make_folder_dataset(root / "src", classes=3, per_class=12, size=(300, 260))
    prepare(str(root / "src"), root / "out", workers=2, val_fraction=0.25, progress=False)
    return root / "out"


def test_loader_workers_leave_a_group_signal_to_the_training_process(prepared_folder):
    # `timeout`, `docker stop` and Ctrl-C signal the whole process group. A worker that died
    # of it would abort the parent (torch: "DataLoader worker ... is killed by signal"),
    # even mid-way through the checkpoint the parent writes before it stops.
    import multiprocessing

    data = Prepared(prepared_folder)
    spec, prep = LoaderSpec(train=True), data.preprocessing(224)
    loader = make_loader(data, "train", spec, 4, torch.device("cpu"), prep, seed=7, workers=1)
    batches = iter(loader)
    first = next(batches)
    (worker,) = multiprocessing.active_children()
    for sig in ("TERM", "INT"):  # sent by another process, as `timeout` sends it
        subprocess.run(["kill", f"-{sig}", str(worker.pid)], check=True)
    time.sleep(0.5)
    assert worker.is_alive()
    assert len([first, *batches]) == len(loader)


def test_training_batches_are_deterministic_across_workers(prepared_folder):
    data = Prepared(prepared_folder)
    spec, prep = LoaderSpec(train=True), data.preprocessing(224)
    outs = []
    for workers in (0, 2):
        loader = make_loader(
            data, "train", spec, 8, torch.device("cpu"), prep, seed=7, workers=workers
        )
        loader.sampler.set_epoch(3)
        outs.append([(x.clone(), y.clone()) for x, y in loader])
    assert len(outs[0]) == len(outs[1]) > 0
    for (x0, y0), (x1, y1) in zip(*outs, strict=True):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    x = outs[0][0][0]
    assert x.shape == (8, 3, 224, 224) and x.is_contiguous(memory_format=torch.channels_last)


def test_starting_an_epoch_leaves_the_global_rng_alone(prepared_folder):
    # A resumed run restores torch's RNG and then starts the loader again; if that drew from
    # the global generator, dropout would differ from the uninterrupted run.
    data = Prepared(prepared_folder)
    loader = make_loader(data, "train", LoaderSpec(train=True), 4, torch.device("cpu"),
                         data.preprocessing(224), seed=1, workers=0)  # fmt: skip
    state = torch.get_rng_state()
    it = iter(loader)
    next(it)
    assert torch.equal(torch.get_rng_state(), state)


def test_training_batch_is_crop_minus_mean_plus_pca(prepared_folder):
    data = Prepared(prepared_folder)
    loader = make_loader(
        data, "train", LoaderSpec(train=True), 4, torch.device("cpu"), data.preprocessing(224),
        seed=1, workers=0,
    )  # fmt: skip
    loader.sampler.set_epoch(0)
    plan = loader.sampler.plan()[0]
    x, _ = next(iter(loader))
    i, y0, x0, f, a = plan.indices[0], plan.ys[0], plan.xs[0], plan.flips[0], plan.alphas[0]
    img = data.split("train").image(int(i)).astype(np.float32)[y0 : y0 + 224, x0 : x0 + 224]
    mean = data.mean[y0 : y0 + 224, x0 : x0 + 224]
    ref = img - mean
    if f:
        ref = ref[:, ::-1]
    ref = ref + 255 * (data.eigenvectors @ (a * np.sqrt(data.eigenvalues)))
    assert np.allclose(x[0].permute(1, 2, 0).numpy(), ref, atol=1e-3)


def test_pca_noise_has_the_papers_strength_under_torchvision_normalisation(prepared_folder):
    # §4.1's colour noise is drawn in 0..255 pixel units; with torchvision's per-channel
    # normalisation it must be divided by 255 * std like the pixels themselves.
    data = Prepared(prepared_folder)
    prep = data.preprocessing(224, normalize="torchvision")
    cpu = torch.device("cpu")
    loader = make_loader(data, "train", LoaderSpec(train=True), 4, cpu, prep, seed=1, workers=0)
    loader.sampler.set_epoch(0)
    plan = loader.sampler.plan()[0]
    x, _ = next(iter(loader))
    i, y0, x0, f, a = plan.indices[0], plan.ys[0], plan.xs[0], plan.flips[0], plan.alphas[0]
    img = data.split("train").image(int(i)).astype(np.float32)[y0 : y0 + 224, x0 : x0 + 224]
    if f:
        img = img[:, ::-1]
    mean = 255 * np.array([0.485, 0.456, 0.406], np.float32)
    std = 255 * np.array([0.229, 0.224, 0.225], np.float32)
    noise = 255 * (data.eigenvectors @ (a * np.sqrt(data.eigenvalues)))
    ref = (img - mean + noise) / std
    assert np.allclose(x[0].permute(1, 2, 0).numpy(), ref, atol=1e-4)


def test_a_model_and_data_that_do_not_fit_are_an_error_naming_both(prepared_folder):
    data = Prepared(prepared_folder)
    prep = data.preprocessing(224)
    other = dataclasses.replace(prep, image_size=(128, 128, 3), mean=np.zeros((128, 128, 3)))
    with pytest.raises(
        DataError, match=r"holds 256x256x3 images but the model was trained on 128x128x3"
    ):
        make_loader(data, "val", LoaderSpec(train=False), 4, torch.device("cpu"), other)
    renamed = dataclasses.replace(prep, classes=("class_0", "cat", "class_2"))
    with pytest.raises(DataError, match=r"first differ at index 1 \(data: class_1, model: cat\)"):
        renamed.check_data(data.image_size, data.classes, "the data")
    with pytest.raises(ValueError, match="mean image"):
        dataclasses.replace(prep, mean=None)


def test_eval_views(prepared_folder):
    data = Prepared(prepared_folder)
    prep, cpu = data.preprocessing(224), torch.device("cpu")
    centre = make_loader(data, "val", LoaderSpec(train=False), 5, cpu, prep, workers=0)
    ten = make_loader(
        data, "val", LoaderSpec(train=False, views="ten-crop"), 5, cpu, prep, workers=0
    )
    xc = torch.cat([x for x, _ in centre])
    xt = torch.cat([x for x, _ in ten], dim=1)
    assert xc.shape[0] == len(data.split("val")) == xt.shape[1]
    assert xt.shape[0] == 10
    assert torch.allclose(xt[4], xc, atol=1e-4)  # view 4 is the centre crop
    assert torch.allclose(xt[9], xc.flip(-1), atol=1e-4)


def test_small_dataset_loader(tmp_path):
    make_fashion_mnist(tmp_path / "fm")
    prepare(str(tmp_path / "fm"), tmp_path / "out", progress=False)
    data = Prepared(tmp_path / "out")
    prep, cpu = data.preprocessing(28), torch.device("cpu")
    loader = make_loader(data, "train", LoaderSpec(train=True, pad=2, pca_std=0.0), 16, cpu, prep)
    x, y = next(iter(loader))
    assert x.shape == (16, 1, 28, 28) and y.shape == (16,)
    val = make_loader(data, "val", LoaderSpec(train=False), 10, cpu, prep)
    assert sum(x.shape[0] for x, _ in val) == 32


def test_padded_crops_of_small_jpeg_images(tmp_path):
    # A folder of 32 px JPEGs (CIFAR-10 as many users have it) with the cifar10 preset's
    # padded random crops: the same padded-crop arithmetic as for array datasets.
    make_folder_dataset(tmp_path / "img", classes=2, per_class=6, size=(32, 32))
    prepare(str(tmp_path / "img"), tmp_path / "out", size=32, workers=1, progress=False)
    data = Prepared(tmp_path / "out")
    spec = LoaderSpec(train=True, pad=4, pca_std=0.0)
    loader = make_loader(
        data, "train", spec, 4, torch.device("cpu"), data.preprocessing(32), workers=0
    )
    loader.sampler.set_epoch(0)
    b = next(loader.batches())
    assert b["inputs"].shape == (4, 3, 32, 32)
    raw = next(iter(loader.loader))  # the worker's batch: whole images
    mean = torch.from_numpy(data.mean)
    expected = T.pad_crop(raw["images"].float() - mean, raw["ys"], raw["xs"], raw["flips"], 4)
    assert torch.allclose(b["inputs"], T.to_nchw(expected), atol=1e-4)
    # Padding shows: some crop reaches into the zero border (offset 0 or 8 of 0..8).
    assert set(raw["ys"].tolist() + raw["xs"].tolist()) - set(range(1, 8))


def test_cutout_zeroes_a_square_clipped_at_the_borders():
    x = torch.ones(3, 8, 8, 2)
    # centres (row, col): the middle, the top-left corner, the bottom-right pixel
    centres = torch.tensor([[0.5, 0.5], [0.0, 0.0], [0.99, 0.99]])
    out = T.cutout(x.clone(), centres, 4)
    zero = out[..., 0] == 0
    assert zero[0].nonzero().min(0).values.tolist() == [2, 2]
    assert zero[0].sum() == 16  # a whole 4x4 square around (4, 4): rows/cols 2..5
    assert zero[1].sum() == 4 and bool(zero[1, :2, :2].all())  # clipped to 2x2
    assert zero[2].sum() == 9 and bool(zero[2, 5:, 5:].all())  # centre (7, 7): rows 5..7
    assert torch.equal(out[..., 0], out[..., 1])  # every channel of a pixel
    assert torch.equal(T.cutout(x.clone(), centres, 0), x)


def test_cutout_in_training_batches_and_no_draws_without_it(tmp_path):
    make_folder_dataset(tmp_path / "img", classes=2, per_class=6, size=(32, 32))
    prepare(str(tmp_path / "img"), tmp_path / "out", size=32, workers=1, progress=False)
    data = Prepared(tmp_path / "out")
    loaders = {}
    for cut in (0, 16):
        spec = LoaderSpec(train=True, pad=4, pca_std=0.0, cutout=cut)
        loaders[cut] = make_loader(
            data, "train", spec, 4, torch.device("cpu"), data.preprocessing(32), workers=0
        )
        loaders[cut].sampler.set_epoch(0)
    plain, cut = (next(loaders[c].batches())["inputs"] for c in (0, 16))
    raw = next(iter(loaders[16].loader))
    # Crops, flips and order are the same draws with and without cutout.
    assert torch.equal(raw["ys"], next(iter(loaders[0].loader))["ys"])
    assert not raw["cuts"].eq(0).all()
    assert not next(iter(loaders[0].loader))["cuts"].any()
    expected = T.to_nchw(T.cutout(plain.permute(0, 2, 3, 1).clone(), raw["cuts"], 16))
    assert torch.equal(cut, expected)
    assert bool((cut == 0).any()) and not torch.equal(cut, plain)


def test_cutout_is_validated():
    from alexnet.config import ConfigError, DataConfig

    with pytest.raises(ConfigError, match=r"data\.cutout must be >= 0"):
        DataConfig(cutout=-1)
    with pytest.raises(ConfigError, match=r"data\.cutout=40 is larger than the crop"):
        DataConfig(cutout=40, crop=32)
    with pytest.raises(ConfigError, match=r"data\.crop must be >= 1"):
        DataConfig(cutout=1, crop=0)


# ---------------------------------------------------------------- interruption


def _prepare_cmd(src, dst):
    return [
        sys.executable,
        "-m",
        "alexnet",
        "prepare",
        str(src),
        str(dst),
        "--workers",
        "1",
        "--quiet",
    ]


def _writing_blob(dst):
    """The training split's JPEG blob is being written (its temporary file exists)."""
    return dst.is_dir() and any(p.name.endswith(".tmp.jpg") for p in dst.iterdir())


def test_interrupted_prepare_leaves_nothing_complete_then_rebuilds(tmp_path, cli_env):
    src = make_folder_dataset(tmp_path / "src", classes=4, per_class=60, size=(640, 480))
    dst = tmp_path / "dst"
    proc = subprocess.Popen(
        _prepare_cmd(src, dst), env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.time() + 60
    while time.time() < deadline and not _writing_blob(dst):
        time.sleep(0.05)
    assert _writing_blob(dst), "prepare never started writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (dst / "meta.json").exists()
    assert not (dst / "train.jpg").exists() and not (dst / "train.index.npy").exists()
    with pytest.raises(DataError, match=r"no meta\.json"):
        Prepared(dst)
    r = subprocess.run(
        _prepare_cmd(src, dst), env=cli_env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert "removed half-written files" in r.stdout
    data = Prepared(dst)
    assert len(data.split("train")) + len(data.split("val")) == 240
    assert not any(".tmp" in p.name for p in dst.iterdir())


def test_sigterm_stops_cleanly(tmp_path, cli_env):
    src = make_folder_dataset(tmp_path / "src", classes=4, per_class=60, size=(640, 480))
    dst = tmp_path / "dst"
    proc = subprocess.Popen(
        _prepare_cmd(src, dst),
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while time.time() < deadline and not _writing_blob(dst):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "Traceback" not in err
    assert not (dst / "meta.json").exists()


def test_finished_split_is_kept_on_rerun(tmp_path):
    src = make_folder_dataset(tmp_path / "src", classes=2, per_class=5)
    dst = tmp_path / "dst"
    prepare(str(src), dst, workers=1, val_fraction=0.2, progress=False)
    (dst / "meta.json").unlink()  # as if killed after the train split
    (dst / "val.index.npy").unlink()
    before = (dst / "train.jpg").stat().st_mtime_ns
    out = prepare(str(src), dst, workers=1, val_fraction=0.2, progress=False)
    assert out["splits"]["train"].get("resumed") is True
    assert (dst / "train.jpg").stat().st_mtime_ns == before
    assert json.loads((dst / "meta.json").read_text())["splits"]["val"]["count"] == 2


def test_resumed_prepare_keeps_the_finished_splits_problems(tmp_path):
    # report.csv is written as each split finishes; a rerun that keeps the train split
    # keeps its rows too, and every row names its split.
    src = tmp_path / "src"
    make_folder_dataset(src / "train", classes=2, per_class=5)
    make_folder_dataset(src / "test", classes=2, per_class=2)
    (src / "train" / "class_0" / "broken.jpg").write_bytes(b"not an image")
    dst = tmp_path / "dst"
    prepare(str(src), dst, workers=1, progress=False)

    def rows():
        with open(dst / "report.csv") as f:
            return {(r["split"], Path(r["path"]).name) for r in csv.DictReader(f)}

    first = rows()
    assert ("train", "broken.jpg") in first, first
    (dst / "meta.json").unlink()  # as if killed after the train split
    (dst / "val.index.npy").unlink()
    out = prepare(str(src), dst, workers=1, progress=False)
    assert out["splits"]["train"].get("resumed") is True
    assert rows() == first


def test_val_fraction_only_matters_where_a_val_split_is_held_out(tmp_path):
    # With its own test/ folder the source ignores --val-fraction and --seed: a rerun with
    # other values is the same dataset. Where val is held out, they stay part of the check.
    make_folder_dataset(tmp_path / "src" / "train", classes=2, per_class=4)
    make_folder_dataset(tmp_path / "src" / "test", classes=2, per_class=2)
    prepare(str(tmp_path / "src"), tmp_path / "a", workers=1, progress=False)
    again = prepare(
        str(tmp_path / "src"), tmp_path / "a", workers=1, val_fraction=0.3, seed=5, progress=False
    )
    assert again["already_prepared"] is True
    flat = make_folder_dataset(tmp_path / "flat", classes=2, per_class=5)
    prepare(str(flat), tmp_path / "b", workers=1, progress=False)
    with pytest.raises(DataError, match=r"--val-fraction 0\.1 \(this run: 0\.3\)"):
        prepare(str(flat), tmp_path / "b", workers=1, val_fraction=0.3, progress=False)


# ---------------------------------------------------------------- `alexnet prepare` as users run it


def test_prepare_with_workers_terminates_its_pool_cleanly(tmp_path, cli_env):
    # The CLI turns SIGTERM into KeyboardInterrupt; forked workers must not inherit that, or
    # pool.terminate() interrupts them inside the task queue's lock (tracebacks, hangs).
    src = make_folder_dataset(tmp_path / "src", classes=2, per_class=40, size=(80, 60))
    runs = [f"main(['prepare', {str(src)!r}, {str(tmp_path / f'out{i}')!r}, '--workers', '2', "
            "'--quiet'])" for i in range(8)]  # fmt: skip
    code = "import sys\nfrom alexnet.cli import main\nsys.exit(max([" + ", ".join(runs) + "]))"
    r = subprocess.run(
        [sys.executable, "-c", code], env=cli_env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "KeyboardInterrupt" not in r.stderr, r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "alexnet", "prepare", str(src), str(tmp_path / "cli"),
         "--workers", "2", "--quiet"],
        env=cli_env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr


def test_split_folders_in_any_case_become_the_splits(tmp_path):
    src = make_split_folders(tmp_path / "src", ("Train", "Validation", "test"), size=(80, 60))
    out = prepare(str(src), tmp_path / "out", workers=1, progress=False)
    data = Prepared(tmp_path / "out")
    assert data.classes == ["class_0", "class_1"]
    assert out["splits"]["train"]["count"] == 8 and out["splits"]["val"]["count"] == 8
    val_paths = (tmp_path / "out" / "val.paths.txt").read_text().split()
    assert all("/Validation/" in p for p in val_paths)
    text = format_summary(out)
    assert f"val split: {src / 'Validation'}" in text
    assert f"ignored: {src / 'test'}" in text
    # test/ alone is the val split; a single wrapper folder is looked through, not a class.
    make_split_folders(tmp_path / "w" / "images", ("train", "TEST"))
    s = open_source(str(tmp_path / "w"))
    assert s.classes == ["class_0", "class_1"]
    assert all("/TEST/" in str(p) for p in s.splits["val"].paths) and len(s.splits["val"].paths)
    make_folder_dataset(tmp_path / "x" / "photos", classes=3, per_class=2)
    assert open_source(str(tmp_path / "x")).classes == ["class_0", "class_1", "class_2"]
    # So is a wrapper folder inside a split (train/images/<class>), in one split or both.
    make_folder_dataset(tmp_path / "y" / "train" / "images", classes=2, per_class=3)
    make_folder_dataset(tmp_path / "y" / "val", classes=2, per_class=1)
    s = open_source(str(tmp_path / "y"))
    assert s.classes == ["class_0", "class_1"] and len(s.splits["val"].paths) == 2
    assert f"{tmp_path / 'y' / 'train' / 'images'}: a wrapper folder" in "\n".join(s.layout)
    # A val split of one class with subfolders is that class, not a wrapper; nor is a
    # folder that holds images itself.
    make_folder_dataset(tmp_path / "z" / "train", classes=2, per_class=2)
    make_folder_dataset(tmp_path / "z" / "val" / "class_0", classes=2, per_class=1)
    s = open_source(str(tmp_path / "z"))
    assert len(s.splits["val"].paths) == 2 and set(s.splits["val"].labels) == {0}
    make_folder_dataset(tmp_path / "v" / "train", classes=1, per_class=2)
    make_folder_dataset(tmp_path / "v" / "train" / "class_0", classes=1, per_class=1)
    make_folder_dataset(tmp_path / "v" / "val", classes=1, per_class=1)
    s = open_source(str(tmp_path / "v"))
    assert s.classes == ["class_0"] and len(s.splits["train"].paths) == 3


def test_small_jpeg_folders_are_stored_at_native_size_like_cifar10(tmp_path):
    from PIL import Image

    src = make_split_folders(tmp_path / "src", ("train", "test"), per_class=5, size=(32, 32))
    photo(30, 28, seed=7).save(src / "train" / "class_1" / "odd.jpg")
    out = prepare(str(src), tmp_path / "out", workers=2, progress=False)
    data = Prepared(tmp_path / "out")
    assert data.kind == "raw" and data.image_size == (32, 32, 3)
    assert len(data.split("train")) == 11 and len(data.split("val")) == 10
    test_files = sorted((src / "test").rglob("*.jpg"))
    stored = np.load(tmp_path / "out" / "val.images.npy")
    expected = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in test_files])
    assert np.array_equal(stored, expected)  # lossless, not resized
    with open(tmp_path / "out" / "report.csv") as f:
        rows = {Path(r["path"]).name: r["reason"] for r in csv.DictReader(f)}
    assert "resized" in rows["odd.jpg"] and out["skipped"] == 0
    # --quality does not apply to raw arrays: a rerun with another finds the data ready.
    again = prepare(str(src), tmp_path / "out", workers=1, quality=50, progress=False)
    assert again.get("already_prepared") is True
    # An explicit --size still stores JPEG crops of that size.
    prepare(str(src), tmp_path / "jpeg", size=48, workers=1, progress=False)
    assert Prepared(tmp_path / "jpeg").kind == "jpeg"
    # --size native keeps larger images at their size too.
    big = make_folder_dataset(tmp_path / "big", classes=2, per_class=3, size=(80, 60))
    prepare(str(big), tmp_path / "native", size="native", workers=1, progress=False)
    assert Prepared(tmp_path / "native").image_size == (60, 80, 3)


def test_rerun_with_other_source_or_options_is_refused(tmp_path):
    src = make_folder_dataset(tmp_path / "src", classes=2, per_class=5)
    other = make_folder_dataset(tmp_path / "other", classes=2, per_class=5)
    dst = tmp_path / "dst"
    prepare(str(src), dst, workers=1, val_fraction=0.2, progress=False)
    meta = json.loads((dst / "meta.json").read_text())
    assert meta["options"]["src"] == str(src.resolve())
    assert json.loads((dst / ".alexnet-prepare.json").read_text())["options"] == meta["options"]
    with pytest.raises(DataError, match=r"--val-fraction 0\.2 \(this run: 0\.4\).*--force"):
        prepare(str(src), dst, workers=1, val_fraction=0.4, progress=False)
    (dst / "meta.json").unlink()  # an interrupted run: finished splits are not reused either
    with pytest.raises(DataError, match=r"SRC .*src \(this run: .*other\)"):
        prepare(str(other), dst, workers=1, val_fraction=0.2, progress=False)
    with pytest.raises(DataError, match=r"--quality 90 \(this run: 70\)"):
        prepare(str(src), dst, workers=1, val_fraction=0.2, quality=70, progress=False)
    (dst / "mine.txt").write_text("not prepare's")
    marker = (dst / ".alexnet-prepare.json").read_text()
    (dst / ".alexnet-prepare.json").write_text("{not json")  # says what --force would replace
    with pytest.raises(
        DataError,
        match=r"unreadable; pass --force to rebuild .*\(replacing its train\.jpg, train\.index\.npy",
    ):
        prepare(str(src), dst, workers=1, val_fraction=0.2, progress=False)
    (dst / ".alexnet-prepare.json").write_text(marker)
    out = prepare(str(other), dst, workers=1, val_fraction=0.4, force=True, progress=False)
    assert out["splits"]["val"]["count"] == 4 and (dst / "mine.txt").is_file()
    assert json.loads((dst / "meta.json").read_text())["options"]["src"] == str(other.resolve())


def test_resumed_prepare_is_byte_identical(tmp_path):
    src = make_folder_dataset(tmp_path / "src", classes=2, per_class=5)
    prepare(str(src), tmp_path / "a", workers=1, val_fraction=0.2, progress=False)
    prepare(str(src), tmp_path / "b", workers=2, val_fraction=0.2, progress=False)
    for name in ("meta.json", "val.index.npy", "mean.npy"):
        (tmp_path / "b" / name).unlink()
    out = prepare(str(src), tmp_path / "b", workers=2, val_fraction=0.2, progress=False)
    assert out["splits"]["train"]["resumed"] is True
    for name in ("train.jpg", "train.index.npy", "val.jpg", "val.index.npy", "mean.npy"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_prepare_deletes_only_its_own_files(tmp_path):
    src = make_folder_dataset(tmp_path / "src", classes=2, per_class=4)
    dst = tmp_path / "dst"
    dst.mkdir()
    theirs = ["notes.tmp.txt", "backup.tmp", ".train.tmp.jpg", "train.bak"]
    for name in theirs:
        (dst / name).write_text("keep me")
    (dst / ".train.index.4242.tmp.npy").write_bytes(b"half-written")  # prepare's own
    out = prepare(str(src), dst, workers=1, progress=False)
    assert out["removed_partial"] == [".train.index.4242.tmp.npy"]
    prepare(str(src), dst, workers=1, force=True, progress=False)
    assert all((dst / name).read_text() == "keep me" for name in theirs)
    with pytest.raises(DataError, match="inside SRC"):
        prepare(str(src), src / "prepared", workers=1, progress=False)
    assert not (src / "prepared").exists()
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="is a file, not a directory"):
        prepare(str(src), tmp_path / "notes.txt", workers=1, progress=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_file_names_that_are_not_utf8_are_kept_byte_for_byte(tmp_path):
    # A Latin-1 name (an old zip, a Samba share): Python sees surrogate escapes. The image is
    # trained on, its ids name the real file, and a bad one is reported under its name.
    src = make_folder_dataset(tmp_path / "src", classes=2, per_class=3, size=(40, 30))
    good = os.fsdecode(b"caf\xe9.jpg")
    (src / "class_0" / "img_0.jpg").rename(src / "class_0" / good)
    (src / "class_1" / os.fsdecode(b"br\xfbl\xe9.jpg")).write_bytes(b"not a jpeg")
    prepare(str(src), tmp_path / "out", workers=1, val_fraction=0.0, progress=False)
    data = Prepared(tmp_path / "out")
    ids = data.ids("train")
    assert len(ids) == 6 and str(src / "class_0" / good) in ids
    assert all(Path(i).is_file() for i in ids)
    report = (tmp_path / "out" / "report.csv").read_bytes()
    assert b"br\xfbl\xe9.jpg" in report


def test_symlinks_never_give_an_image_a_second_class_or_split(tmp_path):
    # Links inside SRC: a folder or a file linked into another class or split (or above
    # one), a class folder that is an alias of another, a pool reached twice. Each image
    # keeps the one label and split of its own folder (a real file wins over a link to it);
    # folders that are not class folders (a pool, hidden or not) may be linked.
    src = tmp_path / "src"
    make_folder_dataset(src / "train", classes=2, per_class=4)
    make_folder_dataset(src / "val", classes=2, per_class=2)
    make_folder_dataset(src / "pool", classes=1, per_class=2)  # not a split: may be linked
    make_folder_dataset(src / "train" / ".hidden", classes=1, per_class=1)
    train, val = src / "train", src / "val"
    (train / "class_0" / "up").symlink_to("..", target_is_directory=True)
    (train / "class_1" / "loop").symlink_to("../class_0", target_is_directory=True)
    (train / "class_1" / "leak").symlink_to("../../val/class_1", target_is_directory=True)
    (train / "alias").symlink_to("class_0", target_is_directory=True)
    (train / "class_1" / "extra").symlink_to("../../pool/class_0", target_is_directory=True)
    (train / "class_0" / "more").symlink_to("../.hidden/class_0", target_is_directory=True)
    (train / "class_0" / "a_link.jpg").symlink_to("../class_1/img_0.jpg")  # sorts first
    (val / "class_0" / "seen.jpg").symlink_to(train / "class_0" / "img_0.jpg")
    (val / "class_1" / "again").symlink_to("../../pool/class_0", target_is_directory=True)
    s = folder_source(src)
    assert s.classes == ["class_0", "class_1"]

    def by_class(split):
        paths, labels = s.splits[split].paths, s.splits[split].labels
        return {c: sorted(str(p.relative_to(src)) for p, y in zip(paths, labels, strict=True)
                          if y == i) for i, c in enumerate(s.classes)}  # fmt: skip

    train_files = by_class("train")
    assert train_files["class_0"] == sorted(
        [f"train/class_0/img_{i}.jpg" for i in range(4)] + ["train/class_0/more/img_0.jpg"]
    )
    assert train_files["class_1"] == sorted(
        [f"train/class_1/extra/img_{i}.jpg" for i in range(2)]
        + [f"train/class_1/img_{i}.jpg" for i in range(4)]
    )
    val_files = by_class("val")
    assert val_files == {c: [f"val/{c}/img_{i}.jpg" for i in range(2)] for c in s.classes}
    reasons = dict(s.problems)
    for link in ("class_0/up", "class_1/loop", "class_1/leak", "class_0/a_link.jpg"):
        assert "outside its class folder" in reasons[str(train / link)], link
    assert "outside its class folder" in reasons[str(val / "class_0" / "seen.jpg")]
    assert "among the dataset's own class folders" in reasons[str(train / "alias")]
    again = reasons[str(val / "class_1" / "again" / "img_0.jpg")]
    assert again == f"the same file as {train / 'class_1' / 'extra' / 'img_0.jpg'} (through a symlink); skipped"  # fmt: skip


def test_a_flat_imagenet_val_shares_no_image_with_train(tmp_path):
    src = tmp_path / "src"
    make_folder_dataset(src / "train", classes=2, per_class=2)
    val = src / "val"
    val.mkdir()
    lines = []
    for i in range(3):
        photo(40, 30, seed=i).save(val / f"ILSVRC2012_val_{i:08d}.JPEG")
        lines.append(f"ILSVRC2012_val_{i:08d}.JPEG class_{i % 2}")
    (val / "ILSVRC2012_val_00000009.JPEG").symlink_to(src / "train" / "class_0" / "img_0.jpg")
    lines.append("ILSVRC2012_val_00000009.JPEG class_0")
    (src / "train" / "class_1" / "dup.jpg").symlink_to(val / "ILSVRC2012_val_00000000.JPEG")
    (src / "val.txt").write_text("\n".join(lines) + "\n")
    s = folder_source(src, val_labels=src / "val.txt")
    assert len(s.splits["val"].paths) == 3 and len(s.splits["train"].paths) == 4
    reasons = dict(s.problems)
    assert "a training image; skipped" in reasons[str(val / "ILSVRC2012_val_00000009.JPEG")]
    assert "outside its class folder" in reasons[str(src / "train" / "class_1" / "dup.jpg")]


def test_symlinks_out_of_src_are_skipped_and_reported(tmp_path):
    src = make_folder_dataset(tmp_path / "src", classes=2, per_class=3)
    outside = make_folder_dataset(tmp_path / "outside", classes=1, per_class=2)
    (src / "linked_class").symlink_to(outside / "class_0", target_is_directory=True)
    (src / "class_0" / "linked.jpg").symlink_to(outside / "class_0" / "img_0.jpg")
    (src / "class_1" / "inside.jpg").symlink_to(src / "class_0" / "img_0.jpg")
    s = folder_source(src, val_fraction=0.0)
    assert s.classes == ["class_0", "class_1"]
    names = [p.name for p in s.splits["train"].paths]
    assert "linked.jpg" not in names and "inside.jpg" not in names  # class_0's, not class_1's
    prepare(str(src), tmp_path / "out", workers=1, val_fraction=0.0, progress=False)
    report = (tmp_path / "out" / "report.csv").read_text()
    assert "linked_class" in report and "linked.jpg" in report and "outside SRC" in report
    assert "outside its class folder" in report and "inside.jpg" in report
    # A broken link is reported too, not passed over without a word; so is a pipe.
    os.mkfifo(src / "class_0" / "pipe.jpg")
    assert dict(folder_source(src, val_fraction=0.0).problems)[
        str(src / "class_0" / "pipe.jpg")
    ] == ("not a regular file or folder; skipped")
    (src / "class_0" / "pipe.jpg").unlink()
    (src / "class_1" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (src / "gone_class").symlink_to(tmp_path / "no_folder", target_is_directory=True)
    prepare(str(src), tmp_path / "out2", workers=1, val_fraction=0.0, progress=False)
    report = (tmp_path / "out2" / "report.csv").read_text()
    lines = [ln for ln in report.splitlines() if "broken symlink" in ln]
    assert (
        len(lines) == 2
        and "gone.jpg" in lines[0] + lines[1]
        and "gone_class" in lines[0] + lines[1]
    )


def test_an_unreadable_class_folder_is_reported_once(tmp_path, monkeypatch):
    # The class keeps its label (0 images) and the report says why in one line, not
    # "cannot be read" and "empty class folder" both; so does a class whose only
    # subfolder cannot be read.
    src = make_folder_dataset(tmp_path / "src", classes=3, per_class=2)
    (src / "class_2" / "sub").mkdir()
    for f in (src / "class_2").glob("*.jpg"):
        f.rename(src / "class_2" / "sub" / f.name)
    iterdir = Path.iterdir

    def refuse(self):
        if self.name in ("class_1", "sub"):
            raise PermissionError(13, "Permission denied", str(self))
        return iterdir(self)

    monkeypatch.setattr(Path, "iterdir", refuse)
    s = folder_source(src, val_fraction=0.0)
    assert s.classes == ["class_0", "class_1", "class_2"]
    one = [w for p, w in s.problems if p == str(src / "class_1")]
    assert len(one) == 1 and "Permission denied" in one[0] and "kept with 0 images" in one[0]
    two = [w for p, w in s.problems if p == str(src / "class_2")]
    assert len(two) == 1 and "a folder in it cannot be read" in two[0], s.problems
    assert not any("empty class folder" in w for _, w in s.problems)


def test_16_bit_png_is_scaled_not_white(tmp_path):
    from PIL import Image

    ramp = np.tile(np.linspace(0, 65535, 64), (64, 1)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    img = load_image(tmp_path / "deep.png", size=64)
    assert img.shape == (64, 64, 3)
    assert np.abs(img[..., 0].astype(float) - ramp / 257).max() <= 1


def test_bad_options_and_datasets_are_clear(tmp_path):
    src = make_folder_dataset(tmp_path / "src", classes=1, per_class=4)
    for bad in (1.0, -0.1):
        with pytest.raises(DataError, match=rf"--val-fraction must be in \[0, 1\), got {bad}"):
            prepare(str(src), tmp_path / "o", val_fraction=bad, progress=False)
    for bad in (0, -1):
        with pytest.raises(DataError, match=rf"--max-pixels must be a positive .*, got {bad}"):
            prepare(str(src), tmp_path / "o", max_pixels=bad, progress=False)
    out = prepare(str(src), tmp_path / "one", workers=1, progress=False)
    assert "warning: only one class (class_0)" in format_summary(out)
    junk = tmp_path / "junk" / "a"
    junk.mkdir(parents=True)
    (junk / "x.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"see .*report\.csv"):
        prepare(str(tmp_path / "junk"), tmp_path / "j", workers=1, progress=False)
    assert "not an image" in (tmp_path / "j" / "report.csv").read_text()


def test_limit_takes_a_fixed_random_subset_not_the_first_class():
    # Prepared splits are sorted by class: the first n images would be one class.
    s = EpochSampler(100, 10, seed=3)
    s.limit(20)
    seen = np.concatenate([b.indices for b in s.plan()])
    assert len(seen) == 20 and len(set(seen.tolist())) == 20 and seen.max() >= 50
    s.set_epoch(1)
    again = np.concatenate([b.indices for b in s.plan()])
    assert set(again.tolist()) == set(seen.tolist())  # the same images every epoch


def test_prepare_on_a_full_disk_is_one_line(tmp_path, capsys):
    from alexnet.cli import main

    with tiny_filesystem(tmp_path / "tiny") as mnt:
        src = make_folder_dataset(tmp_path / "src", classes=2, per_class=20, size=(300, 260))
        assert main(["prepare", str(src), str(mnt / "p"), "--workers", "1", "--quiet"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "no space left on the device" in err[0], err
        assert "the same command continues" in err[0]
        assert not [p for p in (mnt / "p").iterdir() if ".tmp" in p.name]


def test_a_split_killed_after_its_final_file_is_rebuilt_whole(tmp_path):
    # Killed (or out of space) after val's arrays but before its paths and report rows:
    # the marker does not list val as done, so the rerun rebuilds it with both.
    src = tmp_path / "src"
    make_folder_dataset(src / "train", classes=2, per_class=4, size=(30, 30))
    make_folder_dataset(src / "test", classes=2, per_class=2, size=(30, 30))
    (src / "test" / "class_1" / "bad.jpg").write_bytes(b"not an image")
    dst = tmp_path / "dst"
    prepare(str(src), dst, workers=1, progress=False)
    marker = dst / ".alexnet-prepare.json"
    record = json.loads(marker.read_text())
    assert set(record["done"]) == {"train", "val"}
    del record["done"]["val"]
    marker.write_text(json.dumps(record))
    (dst / "val.paths.txt").unlink()
    (dst / "meta.json").unlink()
    out = prepare(str(src), dst, workers=1, progress=False)
    assert out["splits"]["train"].get("resumed") and not out["splits"]["val"].get("resumed")
    assert (dst / "val.paths.txt").is_file()
    assert "bad.jpg" in (dst / "report.csv").read_text()


@pytest.mark.parametrize("train,views", [(True, "center"), (False, "center"), (False, "ten-crop")])
def test_decoding_whole_batches_in_the_main_process_gives_the_workers_inputs(
    tmp_path, train, views
):
    """data.decode=cuda: workers only read the files and torchvision decodes whole batches
    on the training device (nvJPEG on a GPU; here its CPU decoder stands in). The crops,
    mirrors, mean image and PCA noise are the CPU workers' exactly; the pixels may differ by
    the decoders' rounding."""
    from alexnet.data.dataset import LoaderSpec, Prepared, make_loader

    src = make_folder_dataset(tmp_path / "src", classes=2, per_class=5, size=(300, 260))
    prepare(str(src), tmp_path / "prep", progress=False, val_fraction=0)
    data = Prepared(tmp_path / "prep")
    prep = data.preprocessing(crop=224)
    spec = LoaderSpec(train=train, views=views)
    batches = {}
    for decode in ("cpu", "cuda"):
        loader = make_loader(data, "train", spec, 4, torch.device("cpu"), prep, workers=1,
                             decode=decode)  # fmt: skip
        loader.sampler.set_epoch(3)
        batches[decode] = list(loader)
    assert len(batches["cpu"]) == len(batches["cuda"]) > 0
    for (xa, ya), (xb, yb) in zip(batches["cpu"], batches["cuda"], strict=True):
        assert torch.equal(ya, yb) and xa.shape == xb.shape
        assert (xa - xb).abs().max() <= 3  # decoder rounding, in 0..255 units


def test_no_usable_image_leaves_only_the_report(tmp_path):
    src = tmp_path / "src"
    for c in ("a", "b"):
        (src / c).mkdir(parents=True)
        for i in range(3):
            (src / c / f"{i}.jpg").write_bytes(b"not an image")
    dst = tmp_path / "dst"
    with pytest.raises(DataError, match="no usable training images"):
        prepare(str(src), dst, workers=1, progress=False)
    assert sorted(p.name for p in dst.iterdir()) == [".alexnet-prepare.json", "report.csv"]
    assert len((dst / "report.csv").read_text().splitlines()) == 7  # header + 6 files
    # The same command, once the files are fixed, writes there without --force.
    for c in ("a", "b"):
        for i in range(3):
            photo(40, 30, seed=i).save(src / c / f"{i}.jpg")
    out = prepare(str(src), dst, workers=1, progress=False)
    assert out["splits"]["train"]["count"] + out["splits"]["val"]["count"] == 6
    assert not (dst / "train.jpg").exists()  # nothing of the failed run's kind is left


def test_a_sigterm_python_drops_in_a_finalizer_still_stops_prepare(tmp_path, monkeypatch):
    # Python prints and drops an exception raised in a __del__ (zipfile's runs as np.savez
    # returns): a SIGTERM handled there must still stop prepare before meta.json.
    from alexnet.interrupts import raising

    finished = []

    class SignalInFinalizer:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10_000):  # the handler runs here, inside __del__
                pass
            finished.append(True)

    original = PixelStats.save

    def save_then_finalize(self, path):
        original(self, path)
        SignalInFinalizer()  # made and finalized at once

    monkeypatch.setattr(PixelStats, "save", save_then_finalize)
    src = make_folder_dataset(tmp_path / "src", classes=2, per_class=5)
    dst = tmp_path / "dst"
    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: dropped.append(u.exc_type))
    with raising():
        with pytest.raises(KeyboardInterrupt):
            prepare(str(src), dst, workers=1, val_fraction=0.2, progress=False)
        # The handler raised inside __del__ (which never finished), where Python drops
        # the exception; raising() keeps its "Exception ignored" traceback quiet.
        assert finished == [] and dropped == []
        sys.unraisablehook(types.SimpleNamespace(exc_type=ValueError))
    assert dropped == [ValueError]  # any other dropped exception is still reported
    assert not (dst / "meta.json").exists()
    monkeypatch.setattr(PixelStats, "save", original)
    out = prepare(str(src), dst, workers=1, val_fraction=0.2, progress=False)
    assert out["splits"]["train"].get("resumed") is True  # the finished split was kept


def test_atomic_writes_never_replace_a_link_a_pipe_or_a_device(tmp_path):
    # `predict --csv /dev/stdout` once replaced /dev/stdout (a symlink) with a file.
    import threading

    from alexnet.atomic import write_text

    target = tmp_path / "real.csv"
    target.write_text("old\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    write_text(link, "new\n")
    assert link.is_symlink() and target.read_text() == "new\n"
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    # daemon: if the write replaced the pipe, the reader waits forever; the test must fail, not hang
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    write_text(fifo, "through the pipe\n")
    reader.join(timeout=30)
    assert got == ["through the pipe\n"] and fifo.is_fifo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.csv", "pipe", "real.csv"]
    if Path("/proc/self").is_dir():  # a folder where no file can be made: its error names
        with pytest.raises(OSError) as info:  # the user's path, not the temporary one
            write_text("/proc/alexnet-test.json", "x")
        assert info.value.filename == "/proc/alexnet-test.json"


def test_workers_killed_from_outside_never_hang_the_pool(tmp_path, cli_env):
    # SIGTERM to the whole process group (`timeout`, `docker stop`) can kill an idle worker
    # while it holds the task queue's lock; Pool.terminate() then waited for it forever.
    script = (
        "import multiprocessing, os, signal, time\n"
        "from alexnet.data.prepare import _chunk_results\n"
        "try:\n"
        "    with _chunk_results(abs, [1, -2, 3, -4], 2) as results:\n"
        "        assert list(results) == [1, 2, 3, 4]\n"
        "        time.sleep(0.5)  # both idle now: one blocks in the queue, holding its lock\n"
        "        for p in multiprocessing.active_children():\n"
        "            os.kill(p.pid, signal.SIGKILL)\n"
        "        time.sleep(0.2)\n"
        "        raise KeyboardInterrupt\n"
        "except KeyboardInterrupt:\n"
        "    print('ended', flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env=cli_env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.stdout.strip() == "ended", done.stderr
