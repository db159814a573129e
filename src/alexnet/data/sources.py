"""Where raw datasets live and how to list them (§2): ImageNet, class folders, CIFAR-10,
Fashion-MNIST.

A *source* is either a list of image files with labels (ImageNet, class folders) or
in-memory uint8 arrays (CIFAR-10, Fashion-MNIST). ``alexnet prepare`` turns a source into
the prepared format of :mod:`alexnet.data.dataset`.
"""

from __future__ import annotations

import csv
import gzip
import os
import pickle
import random
import re
import struct
import typing
from collections import defaultdict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from ..atomic import write_bytes

IMAGE_EXTENSIONS = {
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
}
WNID = re.compile(r"^n\d{8}$")
FASHION_MNIST_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "val": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip


class DataError(ValueError):
    """Data that is missing or unusable; the message says what to do."""


@dataclass
class FileSplit:
    """Image files of one split: paths, labels (indices into ``classes``)."""

    paths: list[Path]
    labels: list[int]


@dataclass
class FileSource:
    kind: str  # "imagenet" | "folder"
    root: Path
    classes: list[str]  # folder names (wnids for ImageNet), index = label
    names: list[str]  # human-readable names
    splits: dict[str, FileSplit]
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    layout: list[str] = field(default_factory=list)  # which folder became which split


@dataclass
class ArraySource:
    kind: str  # "cifar10" | "fashion-mnist"
    root: Path
    classes: list[str]
    names: list[str]
    images: dict[str, np.ndarray]  # split -> (N, H, W, C) uint8
    labels: dict[str, np.ndarray]  # split -> (N,) int64


Source = FileSource | ArraySource


# --------------------------------------------------------------------------------------
# Class names


def imagenet_class_names() -> dict[str, str]:
    """wnid -> human-readable name for the 1000 ILSVRC-2012 classes."""
    text = resources.files("alexnet").joinpath("resources/imagenet_classes.txt").read_text()
    return dict(line.split(" ", 1) for line in text.splitlines() if line.strip())


# --------------------------------------------------------------------------------------
# Class folders and ImageNet


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _outside(path: Path, top: Path) -> bool:
    """``path`` is a symlink (or lies under one) that leads outside ``top`` (resolved)."""
    return not path.resolve().is_relative_to(top)


def _skip_outside(path: Path, top: Path, problems: list[tuple[str, str]]) -> bool:
    if path.is_symlink() and _outside(path, top):
        problems.append((str(path), f"symlink to {path.resolve()}, outside SRC; skipped"))
        return True
    return False


def _broken(path: Path, problems: list[tuple[str, str]]) -> bool:
    """``path`` is a symlink to nothing: noted in ``problems``."""
    if path.is_symlink() and not path.exists():
        problems.append((str(path), f"broken symlink (to {os.readlink(path)}); skipped"))
        return True
    return False


def _listing(folder: Path, problems: list[tuple[str, str]]) -> list[Path]:
    """The visible entries of ``folder``, sorted; a folder that cannot be read is noted in
    ``problems`` and gives none (one locked ``lost+found`` never stops a whole job)."""
    try:
        return sorted(f for f in folder.iterdir() if not f.name.startswith("."))
    except OSError as err:
        problems.append((str(folder), f"cannot be read ({err.strerror or err}); skipped"))
        return []


def _kind(path: Path, problems: list[tuple[str, str]]) -> str | None:
    """ "broken" (a symlink to nothing), "dir" or "file"; None for anything else (a device,
    a socket) and for an entry that cannot be looked at (noted in ``problems``)."""
    try:
        if path.is_symlink() and not path.exists():
            return "broken"
        return "dir" if path.is_dir() else "file" if path.is_file() else None
    except OSError as err:  # a folder that can be listed but not entered
        problems.append((str(path), f"cannot be read ({err.strerror or err}); skipped"))
        return None


def _subdirs(root: Path, top: Path, problems: list[tuple[str, str]]) -> list[Path]:
    """Visible subfolders of ``root``; symlinked ones that lead outside ``top`` are skipped,
    broken ones noted."""
    out = []
    for d in _listing(root, problems):
        kind = _kind(d, problems)
        if kind == "broken":
            _broken(d, problems)
        elif kind == "dir" and not _skip_outside(d, top, problems):
            out.append(d)
    return out


def _into(target: Path, fence: list[Path]) -> int:
    """How many of the labelled folders ``fence`` (resolved) ``target`` (resolved) lies in
    or holds."""
    return sum(target.is_relative_to(r) or r.is_relative_to(target) for r in fence)


def _labelled_folders(splits: list[tuple[Path, list[Path]]]) -> list[Path]:
    """The resolved class folders of ``splits`` ((split folder, its class folders); a flat
    split, ImageNet's val, is itself one): the folders whose images have a label and a
    split."""
    return [d.resolve() for split, classes in splits for d in (classes or [split])]


def walk_files(
    d: Path,
    problems: list[tuple[str, str]],
    top: Path | None = None,
    broken_too: bool = False,
    fence: list[Path] | None = None,
    reals: dict[Path, str] | None = None,
) -> list[Path]:
    """Files under ``d`` (recursively, in sorted order), passing over hidden names and
    never visiting a folder twice (symlink loops). With ``top`` (resolved), symlinks that
    lead outside it are not followed; without, links are followed wherever they lead.
    With ``fence`` (:func:`_labelled_folders`, ``d`` one of them), a symlink that leads out
    of ``d`` into another labelled folder (or above one) is not followed: its images belong
    to another class or split. Broken symlinks (listed among the files instead with
    ``broken_too``), unreadable folders and the links passed over are added to
    ``problems`` as (path, why). ``reals`` gets each file's resolved path (cheaply: only a
    link is resolved)."""
    out: list[Path] = []
    seen: set[Path] = set()
    home = d.resolve()
    stack = [d]
    while stack:
        cur = stack.pop()
        real = cur.resolve()
        if real in seen:
            continue
        seen.add(real)
        subdirs = []
        for f in _listing(cur, problems):
            noted = len(problems)
            kind = _kind(f, problems)
            if kind is None and len(problems) == noted:  # a pipe, socket or device
                problems.append((str(f), "not a regular file or folder; skipped"))
            if kind == "broken":
                if broken_too:
                    out.append(f)
                else:
                    _broken(f, problems)
            elif (
                kind is None
                or (top is not None and _skip_outside(f, top, problems))
                or (fence and f.is_symlink() and _labelled_elsewhere(f, home, fence, d, problems))
            ):
                continue
            elif kind == "dir":
                subdirs.append(f)
            else:
                out.append(f)
                if reals is not None:  # strings: Path objects cost ~3x here
                    reals[f] = str(f.resolve()) if f.is_symlink() else os.path.join(real, f.name)
        stack.extend(reversed(subdirs))
    return sorted(out)


def _labelled_elsewhere(
    link: Path, home: Path, fence: list[Path], d: Path, problems: list[tuple[str, str]]
) -> bool:
    """``link`` (in class folder ``d``, resolved ``home``) leads into another labelled folder
    or above one: noted in ``problems``."""
    target = link.resolve()
    if target.is_relative_to(home) or not _into(target, fence):
        return False
    why = f"symlink to {target}, outside its class folder {d}"
    problems.append((str(link), f"{why}; skipped (another class's or split's images)"))
    return True


def _scan_class_dirs(
    root: Path,
    problems: list[tuple[str, str]],
    top: Path | None = None,
    fence: list[Path] | None = None,
    taken: dict[str, Path] | None = None,
) -> dict[str, list[Path]]:
    """``root/<class>/**`` -> images by class name. ``fence``: the dataset's labelled
    folders (:func:`_labelled_folders`, default ``root``'s): a symlink may not bring another
    class's or split's images in. ``taken`` (shared by the splits of one dataset): each file, by its resolved
    path, is taken once; a second path to it (a symlink) is skipped and noted."""
    top = (top or root).resolve()
    fence = fence or _labelled_folders([(root, _subdirs(root, top, []))])
    taken = {} if taken is None else taken
    classes: dict[str, list[Path]] = {}
    for d in _subdirs(root, top, problems):
        if d.is_symlink() and _into(d.resolve(), fence) > 1:  # itself, and another
            why = f"symlink to {d.resolve()}, among the dataset's own class folders"
            problems.append((str(d), f"{why}; skipped (its images would be counted twice)"))
            continue
        files, first = [], len(problems)
        reals: dict[Path, str] = {}
        for f in walk_files(d, problems, top, fence=fence, reals=reals):
            if not _is_image(f):
                problems.append((str(f), "not an image file (extension); skipped"))
                continue
            real = reals[f]
            if real in taken:
                problems.append(
                    (str(f), f"the same file as {taken[real]} (through a symlink); skipped")
                )
                continue
            taken[real] = f
            files.append(f)
        if not files:
            # An unreadable class folder (or one inside it) is why there are no images:
            # say that, not "empty class folder" as well.
            unread = [
                i for i in range(first, len(problems))
                if "cannot be read" in problems[i][1] and Path(problems[i][0]).is_relative_to(d)
            ]  # fmt: skip
            keep = "the class is kept with 0 images (fix it and rerun with --force)"
            if unread and problems[unread[0]][0] == str(d):
                why = problems[unread[0]][1].removesuffix("; skipped")
                problems[unread[0]] = (str(d), f"{why}; {keep}")
            elif unread:
                problems.append(
                    (str(d), f"no readable images (a folder in it cannot be read); {keep}")
                )
            else:
                problems.append(
                    (str(d), "empty class folder: no images; the class is kept with 0 images")
                )
        classes[d.name] = files
    return classes


def _flat_val_labels(
    val_dir: Path,
    labels_file: Path,
    classes: list[str],
    problems: list[tuple[str, str]],
    train_folders: list[Path] | None = None,
) -> FileSplit:
    """Flat ILSVRC2012 val images with a labels file.

    Accepted: a ``LOC_val_solution.csv``-style CSV (``ImageId,PredictionString`` whose first
    token is the wnid), a text file of ``<file name> <wnid>`` lines, or the devkit's
    ``ILSVRC2012_validation_ground_truth.txt`` (one 1-based ILSVRC2012_ID per line, in
    file-name order) when a ``wnids.txt``/``synsets.txt`` beside it lists the wnids in
    ILSVRC2012_ID order. Broken symlinks are noted in ``problems`` and skipped (they still
    count in the devkit's file-name order, so the labels of the others stay aligned); hidden
    names (macOS's ``._*`` files) are passed over.
    """
    index = {c: i for i, c in enumerate(classes)}
    # Images by name, broken links included; kind "file" or "broken" only.
    entries = [(f, k) for f in _listing(val_dir, problems) if _is_image(f)
               for k in [_kind(f, problems)] if k in ("file", "broken")]  # fmt: skip
    mapping: dict[str, str] = {}
    text = labels_file.read_text()
    if labels_file.suffix.lower() == ".csv":
        for row in csv.DictReader(text.splitlines()):
            image_id = row.get("ImageId")
            pred = (row.get("PredictionString") or "").split()
            if not image_id or not pred:
                raise DataError(f"{labels_file}: expected columns ImageId,PredictionString")
            mapping[image_id] = pred[0]
    else:
        lines = [ln.split() for ln in text.splitlines() if ln.strip()]
        if lines and all(len(ln) == 1 and ln[0].isdigit() for ln in lines):
            order_file = next(
                (
                    p
                    for p in (labels_file.parent / "wnids.txt", labels_file.parent / "synsets.txt")
                    if p.is_file()
                ),
                None,
            )
            if order_file is None:
                raise DataError(
                    f"{labels_file} holds ILSVRC2012_IDs; put the devkit's wnid order (one wnid per "
                    f"line, ID 1 first) in {labels_file.parent / 'wnids.txt'}"
                )
            order = [ln.split()[0] for ln in order_file.read_text().splitlines() if ln.strip()]
            files = [f for f, _ in entries]
            if len(files) != len(lines):
                raise DataError(
                    f"{labels_file} has {len(lines)} labels but {val_dir} holds {len(files)} images"
                )
            mapping = {f.stem: order[int(ln[0]) - 1] for f, ln in zip(files, lines, strict=True)}
        else:
            for ln in lines:
                if len(ln) < 2:
                    raise DataError(
                        f"{labels_file}: expected '<file> <wnid>' lines, got {' '.join(ln)!r}"
                    )
                mapping[Path(ln[0]).stem] = ln[1]
    paths, labels = [], []
    for f, kind in entries:
        if kind == "broken":
            _broken(f, problems)
            continue
        if train_folders and f.is_symlink() and _into(f.resolve(), train_folders):
            why = f"symlink to {f.resolve()}, a training image"
            problems.append((str(f), f"{why}; skipped (it would be in both splits)"))
            continue
        wnid = mapping.get(f.stem)
        if wnid is None:
            raise DataError(f"{f.name} has no label in {labels_file}")
        if wnid not in index:
            raise DataError(
                f"{labels_file}: {f.name} is labelled {wnid}, which is not a training class"
            )
        paths.append(f)
        labels.append(index[wnid])
    return FileSplit(paths, labels)


def stratified_split(
    paths_by_class: dict[str, list[Path]], val_fraction: float, seed: int
) -> tuple[FileSplit, FileSplit]:
    """Reproducible per-class split: the same seed always gives the same files."""
    train, val = FileSplit([], []), FileSplit([], [])
    for label, (_, files) in enumerate(sorted(paths_by_class.items())):
        files = list(files)
        random.Random(f"{seed}:{label}").shuffle(files)
        n_val = round(len(files) * val_fraction) if len(files) > 1 else 0
        for f in files[:n_val]:
            val.paths.append(f)
            val.labels.append(label)
        for f in files[n_val:]:
            train.paths.append(f)
            train.labels.append(label)
    return train, val


TRAIN_DIRS = ("train", "training")
VAL_DIRS = ("val", "valid", "validation", "test", "testing")


def _has_images(d: Path) -> bool:
    try:
        return any(f.is_file() and _is_image(f) for f in d.iterdir())
    except OSError:
        return True  # unreadable: not taken for a wrapper


def _wrapper(d: Path, top: Path, classes: frozenset[str] = frozenset()) -> Path | None:
    """The one subfolder of ``d`` if it only wraps folders (``images/<class>``): no images
    beside it or in it, folders inside it, and not named as one of ``classes``. Reads the
    directory entries' types (no stat per file: a flat val folder holds 50,000)."""
    try:
        with os.scandir(d) as it:
            dirs = [e.name for e in it if not e.name.startswith(".") and e.is_dir()]
    except OSError:
        return None
    if len(dirs) != 1 or dirs[0] in classes:
        return None
    inner = d / dirs[0]
    if _outside(inner, top) or not _subdirs(inner, top, []):
        return None
    return None if _has_images(d) or _has_images(inner) else inner


def _unwrap(
    split: Path, top: Path, layout: list[str], classes: frozenset[str] = frozenset()
) -> Path:
    """A split folder, through the wrapper folders inside it (``train/images/<class>``);
    a folder named as one of ``classes`` (the training classes, for val) is a class."""
    while (inner := _wrapper(split, top, classes)) is not None:
        layout.append(f"{inner}: a wrapper folder, not a class; looked inside it")
        split = inner
    return split


def _split_dirs(
    root: Path, top: Path, problems: list[tuple[str, str]], layout: list[str]
) -> tuple[Path, Path | None, Path | None]:
    """Where the splits are: descends through single wrapper folders (``SRC/images/...``),
    then finds ``train`` and the first of ``val``/``valid``/``validation``/``test`` (any
    case). Returns (base, train folder, val folder); notes what it chose in ``layout``."""
    base = root
    while True:
        dirs = _subdirs(base, top, problems)
        by_name: dict[str, Path] = {}
        for d in dirs:
            by_name.setdefault(d.name.lower(), d)
        train = next((by_name[n] for n in TRAIN_DIRS if n in by_name), None)
        if train is not None:
            break
        inner = _wrapper(base, top)
        if inner is not None:
            layout.append(f"{inner}: a wrapper folder, not a class; looked inside it")
            base = inner
            continue
        return base, None, None
    val_dirs = [by_name[n] for n in VAL_DIRS if n in by_name]
    val = val_dirs[0] if val_dirs else None
    for d in dirs:
        if d != train and d != val:
            why = "a second held-out folder" if d in val_dirs else "not a train/val/test folder"
            layout.append(f"ignored: {d} ({why})")
    train = _unwrap(train, top, layout)
    names = frozenset(d.name for d in _subdirs(train, top, []))
    val = _unwrap(val, top, layout, names) if val is not None else None
    layout.append(f"train split: {train}")
    if val is not None:
        layout.append(f"val split: {val}")
    return base, train, val


def folder_source(
    root: Path, val_fraction: float = 0.1, seed: int = 0, val_labels: Path | None = None
) -> FileSource:
    """``root/train/<class>/*`` (+ ``root/val/``, ``valid/``, ``validation/`` or ``test/``,
    any case, behind any single wrapper folder) or ``root/<class>/*`` split by seed."""
    if not 0 <= val_fraction < 1:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    problems: list[tuple[str, str]] = []
    layout: list[str] = []
    flat = flat_wnid_files(root, problems)
    if flat is not None:
        return flat
    top = root.resolve()
    base, train_dir, val_dir = _split_dirs(root, top, problems, layout)
    if train_dir is not None:
        # Listed once: a flat val folder holds 50,000 files.
        train_classes = _subdirs(train_dir, top, [])
        val_classes = _subdirs(val_dir, top, []) if val_dir is not None else []
        splits_listed = [(train_dir, train_classes)]
        if val_dir is not None:
            splits_listed.append((val_dir, val_classes))
        fence = _labelled_folders(splits_listed)
        taken: dict[str, Path] = {}
        by_class = _scan_class_dirs(train_dir, problems, top, fence, taken)
        if not by_class:
            raise DataError(
                f"{train_dir} has no class folders (expected {train_dir}/<class>/<image>)"
            )
        classes = sorted(by_class)
        train = FileSplit(
            [p for c in classes for p in by_class[c]],
            [i for i, c in enumerate(classes) for _ in by_class[c]],
        )
        splits = {"train": train}
        if val_dir is not None:
            if val_classes:
                val_by_class = _scan_class_dirs(val_dir, problems, top, fence, taken)
                unknown = sorted(set(val_by_class) - set(classes))
                if unknown:
                    raise DataError(f"{val_dir} has classes not in {train_dir}: {unknown[:5]}")
                index = {c: i for i, c in enumerate(classes)}
                splits["val"] = FileSplit(
                    [p for c in sorted(val_by_class) for p in val_by_class[c]],
                    [index[c] for c in sorted(val_by_class) for _ in val_by_class[c]],
                )
            else:
                labels_file = val_labels or _find_val_labels(base)
                if labels_file is None:
                    raise DataError(
                        f"{val_dir} is flat (no class folders) and no labels file was found; pass "
                        "--val-labels FILE (LOC_val_solution.csv, '<file> <wnid>' lines, or the "
                        "devkit's ILSVRC2012_validation_ground_truth.txt with wnids.txt beside it)"
                    )
                train_folders = _labelled_folders([(train_dir, train_classes)])
                splits["val"] = _flat_val_labels(
                    val_dir, labels_file, classes, problems, train_folders
                )
        else:
            layout.append(
                f"val split: {val_fraction:.0%} of each class of {train_dir} (--val-fraction)"
            )
            splits["train"], splits["val"] = stratified_split(by_class, val_fraction, seed)
    else:
        by_class = _scan_class_dirs(base, problems, top)
        if not by_class:
            raise DataError(
                f"{root} has no class folders; expected {root}/<class>/<image> or "
                f"{root}/train/<class>/<image>"
            )
        classes = sorted(by_class)
        layout.append(f"classes: the folders of {base}")
        layout.append(f"val split: {val_fraction:.0%} of each class (--val-fraction)")
        splits = dict(
            zip(("train", "val"), stratified_split(by_class, val_fraction, seed), strict=True)
        )
    kind = "imagenet" if all(WNID.match(c) for c in classes) else "folder"
    names = classes
    if kind == "imagenet":
        table = imagenet_class_names()
        names = [table.get(c, c) for c in classes]
    # One row per problem, however often a folder was looked at (layout detection, scan).
    problems = list(dict.fromkeys(problems))
    return FileSource(kind, root, classes, names, splits, problems, layout)


FLAT_WNID_FILE = re.compile(r"^(n\d{8})_.*$")


def flat_wnid_files(root: Path, problems: list[tuple[str, str]]) -> FileSource | None:
    """A flat folder of ``<wnid>_<name>.JPEG`` files (like shared/data/imagenet-samples):
    every file is a training image of its wnid's class; names come from the file names.
    Broken symlinks among them are noted in ``problems`` and skipped; hidden names (macOS's
    ``._*`` files, ``.ipynb_checkpoints``) are passed over, as everywhere else."""
    found: list[tuple[str, str]] = []  # kept only if this is the layout
    entries = [(p, _kind(p, found)) for p in _listing(root, found)]
    if any(k == "dir" for _, k in entries):
        return None
    files = [p for p, k in entries if k == "file" and _is_image(p)]
    for p, k in entries:
        if k == "broken" and _is_image(p):
            _broken(p, found)
    matches = [FLAT_WNID_FILE.match(p.stem) for p in files]
    if not files or not all(matches):
        return None
    wnids = sorted({m.group(1) for m in matches if m})
    index = {w: i for i, w in enumerate(wnids)}
    table = imagenet_class_names()
    names = {m.group(1): m.string[len(m.group(1)) + 1 :] for m in matches if m}
    split = FileSplit(files, [index[m.group(1)] for m in matches if m])
    return FileSource(
        "imagenet",
        root,
        wnids,
        [table.get(w, names[w]) for w in wnids],
        {"train": split},
        list(dict.fromkeys([*problems, *found])),
    )


def _find_val_labels(root: Path) -> Path | None:
    for name in (
        "LOC_val_solution.csv",
        "val_labels.txt",
        "ILSVRC2012_validation_ground_truth.txt",
        "val/labels.txt",
    ):
        for base in (root, root.parent):
            if (base / name).is_file():
                return base / name
    return None


# --------------------------------------------------------------------------------------
# Fashion-MNIST (IDX files) and CIFAR-10 (python pickles)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally .gz) as a numpy array; validates the header."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise DataError(
            f"{path}: cannot read IDX file ({err}); delete it and fetch it again"
        ) from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(
            f"{path}: header says {shape} but holds {body.size} bytes; the file is truncated"
        )
    return body.reshape(shape)


def _folder_or_new(directory: Path, dataset: str) -> None:
    """A dataset kind's SRC must be a folder (or not exist yet, to download into)."""
    if directory.is_symlink() and not directory.exists():
        raise DataError(
            f"{directory} is a broken symlink (to {os.readlink(directory)}): pass the folder "
            f"that holds {dataset}'s files, or a new folder to download them into"
        )
    if directory.exists() and not directory.is_dir():
        raise DataError(
            f"{directory} is a file, not a folder: pass the folder that holds {dataset}'s "
            "files, or a new folder to download them into"
        )


def find_fashion_mnist(directory: Path | None = None, download: bool = True) -> Path:
    """A directory with the four Fashion-MNIST IDX files: the one given, Debian's, else a download."""
    if directory is not None:
        _folder_or_new(directory, "Fashion-MNIST")
    needed = [f for pair in FASHION_MNIST_FILES.values() for f in pair]
    candidates = [directory] if directory else list(FASHION_MNIST_DIRS)
    for d in candidates:
        if d is not None and all(
            (d / f).is_file() or (d / f.removesuffix(".gz")).is_file() for f in needed
        ):
            return d
    target = directory or Path("data/fashion-mnist-raw")
    if download:
        try:
            _download(FASHION_MNIST_URL, needed, target)
            return target
        except OSError as err:
            reason = str(err)
    else:
        reason = "download disabled"
    raise DataError(
        "Fashion-MNIST not found"
        + (
            f" in {directory}"
            if directory
            else " in " + ", ".join(str(d) for d in FASHION_MNIST_DIRS)
        )
        + f" and could not be downloaded ({reason}). Get it with one of:\n"
        "  sudo apt-get install dataset-fashion-mnist      # Debian: /usr/share/datasets/fashion-mnist\n"
        f"  download {', '.join(needed)} from {FASHION_MNIST_URL} into a directory and pass it"
    )


def _download(base_url: str, files: list[str], target: Path) -> None:
    import urllib.request

    target.mkdir(parents=True, exist_ok=True)
    for name in files:
        dest = target / name
        if dest.is_file():
            continue
        with urllib.request.urlopen(base_url + name, timeout=30) as r:
            write_bytes(dest, r.read())


def fashion_mnist_source(directory: Path | None = None, download: bool = True) -> ArraySource:
    root = find_fashion_mnist(directory, download)
    images, labels = {}, {}
    for split, (img_name, lbl_name) in FASHION_MNIST_FILES.items():
        img_path = (
            root / img_name if (root / img_name).is_file() else root / img_name.removesuffix(".gz")
        )
        lbl_path = (
            root / lbl_name if (root / lbl_name).is_file() else root / lbl_name.removesuffix(".gz")
        )
        x, y = read_idx(img_path), read_idx(lbl_path)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{img_path} / {lbl_path}: shapes {x.shape} and {y.shape} do not match")
        images[split] = x[..., None]  # (N, 28, 28, 1)
        labels[split] = y.astype(np.int64)
    return ArraySource(
        "fashion-mnist",
        root,
        list(FASHION_MNIST_CLASSES),
        list(FASHION_MNIST_CLASSES),
        images,
        labels,
    )


class _SafeUnpickler(pickle.Unpickler):
    """CIFAR-10's batches are pickles: allow only the numpy and builtin types they contain."""

    ALLOWED: typing.ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("builtins", "dict"),
        ("builtins", "list"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # type: ignore[override]
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR-10 batch")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            d = _SafeUnpickler(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError) as err:
        raise DataError(f"{path}: not a readable CIFAR-10 batch ({err})") from None
    data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(data), np.asarray(d[b"labels"], dtype=np.int64)


def find_cifar10(directory: Path, download: bool = True) -> Path:
    _folder_or_new(directory, "CIFAR-10")
    for d in (directory, directory / "cifar-10-batches-py"):
        if (d / "data_batch_1").is_file() and (d / "test_batch").is_file():
            return d
    batches = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    for d in (directory, directory / "cifar-10-batches-py"):
        have = [b for b in batches if (d / b).is_file()]
        if have:
            raise DataError(
                f"{d} holds only part of CIFAR-10's batches (no "
                f"{', '.join(b for b in batches if b not in have)}); unpack "
                "cifar-10-python.tar.gz there again"
            )
    # The download goes into the directory: never into a folder of the user's own files.
    own = [p.name for p in directory.iterdir()] if directory.is_dir() else []
    own = [
        n
        for n in own
        if not n.startswith(".") and n not in ("cifar-10-python.tar.gz", "cifar-10-batches-py")
    ]
    if download and own:
        raise DataError(
            f"CIFAR-10 not found in {directory}, which holds other files ({', '.join(sorted(own)[:3])}"
            f"{', ...' if len(own) > 3 else ''}): to prepare them as image class folders leave "
            "out --kind cifar10; to download CIFAR-10, pass a new or empty directory"
        )
    if download:
        try:
            from torchvision.datasets import CIFAR10

            CIFAR10(str(directory), train=True, download=True)
            return directory / "cifar-10-batches-py"
        except Exception as err:  # torchvision raises URLError, RuntimeError, ...
            reason = str(err)
    else:
        reason = "download disabled"
    raise DataError(
        f"CIFAR-10 not found in {directory} and could not be downloaded ({reason}). Download "
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, unpack it and pass the "
        "directory holding cifar-10-batches-py/"
    )


def cifar10_source(directory: Path, download: bool = True) -> ArraySource:
    root = find_cifar10(directory, download)
    parts = [_read_cifar_batch(root / f"data_batch_{i}") for i in range(1, 6)]
    test = _read_cifar_batch(root / "test_batch")
    images = {"train": np.concatenate([p[0] for p in parts]), "val": test[0]}
    labels = {"train": np.concatenate([p[1] for p in parts]), "val": test[1]}
    return ArraySource(
        "cifar10", root, list(CIFAR10_CLASSES), list(CIFAR10_CLASSES), images, labels
    )


# --------------------------------------------------------------------------------------


def open_source(
    src: str,
    kind: str = "auto",
    val_fraction: float = 0.1,
    seed: int = 0,
    val_labels: Path | None = None,
    download: bool = True,
) -> Source:
    """Find what ``src`` is: ``fashion-mnist``/``cifar10`` by name, or a directory."""
    if kind == "auto":
        if src in ("fashion-mnist", "cifar10"):
            kind, path = src, None
        else:
            path = Path(src)
            if not path.exists():
                raise DataError(f"data directory not found: {path}")
            if not path.is_dir():
                raise DataError(f"{path} is not a directory")
            if (path / "data_batch_1").is_file() or (path / "cifar-10-batches-py").is_dir():
                kind = "cifar10"
            elif any(path.glob("train-images-idx3-ubyte*")):
                kind = "fashion-mnist"
            else:
                kind = "folder"
    else:
        path = None if src in ("fashion-mnist", "cifar10") else Path(src)
    if kind == "fashion-mnist":
        return fashion_mnist_source(path, download)
    if kind == "cifar10":
        return cifar10_source(path or Path("data/cifar10-raw"), download)
    if kind in ("folder", "imagenet"):
        if path is None or not path.is_dir():
            raise DataError(f"data directory not found: {src}")
        return folder_source(path, val_fraction, seed, val_labels)
    raise DataError(
        f"unknown dataset kind {kind!r}; choose auto, folder, imagenet, cifar10, fashion-mnist"
    )


def class_counts(labels: list[int] | np.ndarray, n_classes: int) -> list[int]:
    counts: dict[int, int] = defaultdict(int)
    for y in labels:
        counts[int(y)] += 1
    return [counts[i] for i in range(n_classes)]
