"""fc7 features and exact nearest neighbours (§6.1, Figure 4 right).

``alexnet features`` writes, for every image of a prepared split, the 4096-d activations of
the last hidden layer (fc7, after its ReLU) as an ``.npz`` file:

    features  (N, D) float16 (or float32 with --dtype float32)
    labels    (N,) int64
    ids       (N,) str: source paths (image datasets) or "split:index"
    classes, names  (K,) str
    model, data, split  () str

``alexnet neighbors`` finds, for each query, the k gallery images nearest in Euclidean
distance on those vectors — exact, in chunks, so a 1.28M x 4096 float16 gallery (10.5 GB)
streams through memory on CPU or GPU: ||q - g||^2 = ||q||^2 + ||g||^2 - 2 q.g, with a running
top-k over gallery chunks.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_path, names_a_folder
from ..progress import bar as progress_bar


def extract_features(
    weights: str, data_dir: str, split: str, out: str, batch_size: int = 128, workers: int | str = "auto",
    device: str = "auto", dtype: str = "float16", progress: bool = True, allow_mismatch: bool = False,
    force: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """fc7 features of every image of a prepared split, written atomically to ``out``
    (.npz); an existing ``out`` is replaced only with ``force``. ``allow_mismatch``: data
    the model was not prepared for (see :meth:`Preprocessing.for_data`); the notes are
    returned."""
    from ..data.dataset import Prepared, make_loader
    from ..engine.distributed import resolve_device
    from ..engine.inference import load_model
    from ..engine.metrics import model_outputs

    if names_a_folder(out):  # checked before the work, not after
        raise ValueError(f"--out {out} is a folder; give a file such as {Path(out) / split}.npz")
    if Path(out).exists() and not force:  # as export: hours of features are never lost silently
        raise ValueError(f"{out} exists; pass --force to replace it")
    dev = resolve_device(device)
    lm = load_model(weights, dev)
    data = Prepared(data_dir)
    # Features carry the data's labels, not the model's: class names only matter as a check.
    # With --allow-mismatch any class list will do: fc7 does not depend on the labels.
    classes = None if allow_mismatch else data.classes
    prep, notes = lm.prep.for_data(
        data.image_size, classes, f"{data_dir} ({split})", allow_mismatch
    )
    loader = make_loader(
        data, split, lm.loader_spec("center"), batch_size, dev, prep, workers=workers
    )
    n = loader.num_samples
    feats = np.zeros((n, lm.model.fc7.out_features), dtype=np.dtype(dtype))
    labels = np.zeros(n, dtype=np.int64)
    bar = progress_bar(n, f"features {split}", enabled=progress)
    for fc7, batch in model_outputs(lm.model, loader.batches(), dev, features=True):
        idx = batch["indices"].cpu().numpy()
        feats[idx] = fc7.cpu().numpy().astype(feats.dtype)
        labels[idx] = batch["labels"].cpu().numpy()
        bar.update(len(idx))
    bar.close()
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_path) as tmp:
        np.savez(
            tmp, features=feats, labels=labels, ids=np.array(data.ids(split)), classes=np.array(data.classes),
            names=np.array(data.names), model=np.array(str(weights)), data=np.array(str(data_dir)), split=np.array(split),
        )  # fmt: skip
    return {
        "out": str(out_path),
        "images": n,
        "dim": feats.shape[1],
        "dtype": dtype,
        "bytes": feats.nbytes,
        "mismatch_notes": notes,
    }


def load_features(path: str) -> dict[str, np.ndarray]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"features file not found: {p} (make one with `alexnet features`)")
    not_ours = f"{p} is not a features file (the .npz that `alexnet features` writes)"
    try:
        with np.load(p, allow_pickle=False) as z:  # a .npy gives an array: TypeError here
            data = {k: z[k] for k in z.files}
    except (TypeError, ValueError, OSError, EOFError, zipfile.BadZipFile):
        raise ValueError(not_ours) from None
    if "features" not in data:
        raise ValueError(f"{not_ours}: it has no 'features' array")
    return data


def nearest(
    queries: torch.Tensor, gallery: np.ndarray | torch.Tensor, k: int = 6, device: str | torch.device = "cpu",
    query_chunk: int = 1024, gallery_chunk: int = 65536, exclude_self: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Exact k nearest gallery rows by Euclidean distance -> (distances, indices), (Q, k).

    The gallery may be float16 and larger than memory allows in float32: it is converted
    chunk by chunk. ``exclude_self``: queries are the gallery's first rows; skip i == i.
    """
    device = torch.device(device)
    n_gallery = len(gallery)
    k_eff = min(k + (1 if exclude_self else 0), n_gallery)
    out_d, out_i = [], []
    for qs in range(0, len(queries), query_chunk):
        q = queries[qs : qs + query_chunk].to(device, torch.float32)
        q2 = (q * q).sum(1, keepdim=True)
        best_d = torch.full((len(q), 0), float("inf"), device=device)
        best_i = torch.zeros((len(q), 0), dtype=torch.int64, device=device)
        for gs in range(0, n_gallery, gallery_chunk):
            g = torch.as_tensor(np.asarray(gallery[gs : gs + gallery_chunk])).to(
                device, torch.float32
            )
            d = (q2 + (g * g).sum(1)[None, :] - 2 * q @ g.T).clamp_min_(0)
            idx = torch.arange(gs, gs + len(g), device=device).expand(len(q), -1)
            if exclude_self:
                d = torch.where(
                    idx == torch.arange(qs, qs + len(q), device=device)[:, None], torch.inf, d
                )
            cat_d, cat_i = torch.cat([best_d, d], 1), torch.cat([best_i, idx], 1)
            top = cat_d.topk(min(k_eff, cat_d.shape[1]), dim=1, largest=False)
            best_d, best_i = top.values, cat_i.gather(1, top.indices)
        out_d.append(best_d[:, :k].sqrt().cpu())
        out_i.append(best_i[:, :k].cpu())
    return torch.cat(out_d), torch.cat(out_i)


def run_neighbors(
    gallery_path: str, query_path: str | None, k: int, device: str, limit: int | None = None
) -> dict[str, Any]:
    from ..engine.distributed import resolve_device

    gal = load_features(gallery_path)
    same = query_path is None or Path(query_path).resolve() == Path(gallery_path).resolve()
    qry = gal if same else load_features(query_path)  # type: ignore[arg-type]
    if not same:  # distances between two models' features mean nothing
        gm, qm = str(gal.get("model", "?")), str(qry.get("model", "?"))
        gd, qd = gal["features"].shape[1], qry["features"].shape[1]
        if gm != qm or gd != qd:
            raise ValueError(
                f"{query_path} holds {qd}-d features of {qm} but {gallery_path} holds {gd}-d "
                f"features of {gm}: extract both with the same weights"
            )
    available = len(gal["features"]) - (1 if same else 0)
    if not 1 <= k <= available:
        raise ValueError(f"-k {k}: choose 1 to {available} (the gallery's other images)")
    q_feats = torch.as_tensor(qry["features"][:limit] if limit else qry["features"])
    dist, idx = nearest(q_feats, gal["features"], k, resolve_device(device), exclude_self=same)
    results = []
    for qi in range(len(q_feats)):
        results.append(
            {
                "query": str(qry["ids"][qi]),
                "query_label": str(qry["names"][qry["labels"][qi]]),
                "neighbors": [
                    {
                        "id": str(gal["ids"][j]),
                        "label": str(gal["names"][gal["labels"][j]]),
                        "distance": float(d),
                    }
                    for d, j in zip(dist[qi].tolist(), idx[qi].tolist(), strict=True)
                ],
            }
        )
    return {
        "gallery": gallery_path,
        "query": query_path or gallery_path,
        "k": k,
        "results": results,
    }


def format_neighbors(r: dict[str, Any], max_queries: int = 20) -> str:
    lines = []
    for q in r["results"][:max_queries]:
        lines.append(f"{q['query']} [{q['query_label']}]")
        lines += [f"  {n['distance']:10.3f}  {n['label']:<20} {n['id']}" for n in q["neighbors"]]
    if len(r["results"]) > max_queries:
        lines.append(f"... {len(r['results']) - max_queries} more queries (use --json)")
    return "\n".join(lines)
