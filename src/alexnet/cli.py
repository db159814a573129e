"""The ``alexnet`` command: parses arguments and hands over to the module that does the work."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .atomic import names_a_folder


def _print_json(obj: object, path: str | None = None) -> None:
    """JSON to ``path`` (atomically), or to standard output when there is none or it is "-"."""
    if path and path != "-":
        from .atomic import write_json

        write_json(path, obj)
    else:
        print(json.dumps(obj, indent=2, default=str))


def _stdout_owner(args: argparse.Namespace) -> str | None:
    """Which of --json/--csv writes to standard output ("-"), so the table goes to stderr.
    A folder given as either is refused here, before the work, not when writing."""
    for opt in ("json", "csv"):
        value = getattr(args, opt, None)
        if isinstance(value, str) and value != "-" and names_a_folder(value):
            raise ValueError(f"--{opt} {value} is a directory; name a file to write")
    claim = [opt for opt in ("json", "csv") if getattr(args, opt, None) == "-"]
    if len(claim) > 1:
        raise ValueError("--json - and --csv - both ask for standard output: give one a file name")
    return claim[0] if claim else None


def _emit(result: dict, formatter: Callable[[dict], str], as_json: bool) -> None:
    """A command's result: JSON for machines, the formatted table for people."""
    if as_json:
        _print_json(result)
    else:
        print(formatter(result))


# --------------------------------------------------------------------------------------
# Subcommands


def cmd_info(args: argparse.Namespace) -> int:
    from .apps.summary import format_summary, summary_dict
    from .network.model import build_model

    overrides = {"variant": args.model, "num_classes": args.num_classes}
    if args.in_channels is not None:
        overrides["in_channels"] = args.in_channels
    if args.input_size is not None:
        overrides["input_size"] = args.input_size
    import torch

    from .engine.distributed import resolve_device
    from .engine.execution import execution_plan, format_plan

    info = summary_dict(build_model(**overrides))
    dev = args.device
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {dev}: no CUDA device is available here; use cpu or auto")
    info["execution"] = execution_plan(resolve_device(dev))
    _emit(info, lambda i: f"{format_summary(i)}\n{format_plan(i['execution'])}", args.json)
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from .data.prepare import format_summary, prepare
    from .interrupts import raising

    # SIGTERM (a cluster or `kill`) stops like Ctrl-C: nothing half-written looks complete.
    with raising():
        summary = prepare(
            args.src, args.dst, kind=args.kind, workers=args.workers, size=args.size,
            quality=args.quality, val_fraction=args.val_fraction, seed=args.seed,
            val_labels=args.val_labels, max_pixels=args.max_pixels, force=args.force,
            download=not args.no_download, progress=not args.quiet,
        )  # fmt: skip
    _emit(summary, format_summary, args.json)
    return 0


def cmd_train(args: argparse.Namespace) -> int:

    from .config import load_train_config
    from .engine.train import TrainingStopped, format_summary, resolve_config_for_resume, train

    overrides = list(args.set or [])
    if args.data:
        overrides.append(f"data.path={args.data}")
    if args.init_from:
        overrides.append(f"init_from={args.init_from}")
    out = args.run_dir = Path(args.out or f"runs/{args.preset or Path(args.config or 'run').stem}")
    cfg = None
    if args.preset or args.config or not args.resume:
        if not (args.preset or args.config):
            raise ValueError("give --preset NAME or --config FILE (or --resume an existing run)")
        cfg = load_train_config(args.preset, args.config, overrides)
    if args.resume:
        cfg = resolve_config_for_resume(out, cfg, overrides)
    try:
        summary = train(cfg, out, resume=args.resume, quiet=args.quiet, force=args.force)
    except TrainingStopped as stopped:
        print(f"alexnet train: {stopped}", file=sys.stderr)
        return stopped.code
    if int(os.environ.get("RANK", "0")) == 0:
        print(format_summary(summary))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .apps import demo

    return demo.run(args.out, args.data, args.epochs, args.set)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .apps.evaluate import format_report, run_evaluation, write_csv

    table_out = sys.stderr if _stdout_owner(args) else sys.stdout
    report = run_evaluation(
        args.weights, args.data, args.split, args.views, args.batch_size, args.workers, args.device,
        progress=not args.quiet, precision=args.precision, allow_mismatch=args.allow_mismatch,
    )  # fmt: skip
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    # With --json - (or --csv -) that alone goes to standard output (for a pipe), the table
    # to stderr.
    print(format_report(report), file=table_out)
    if args.json:
        _print_json(report, args.json)
    if args.csv:
        write_csv(report, args.csv)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .apps.predict import format_table, run, shown, write_outputs

    table_out = sys.stderr if _stdout_owner(args) else sys.stdout
    results, failed = run(
        args.weights, args.inputs, args.top_k, args.views, args.batch_size, args.device,
        progress=not args.quiet,
    )  # fmt: skip
    if not args.quiet:
        print(format_table(results), file=table_out)
    if args.json == "-":
        _print_json(results)
    write_outputs(results, None if args.json == "-" else args.json, args.csv)
    if failed:
        if args.quiet:  # no table, but the unreadable files are still named
            for r in results:
                if "error" in r:
                    print(f"  {shown(r['path'])}: {shown(r['error'])}", file=sys.stderr)
        print(
            f"alexnet predict: {failed} of {len(results)} files could not be read (see above)",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from .apps.retrieval import extract_features

    r = extract_features(
        args.weights,
        args.data,
        args.split,
        args.out,
        args.batch_size,
        args.workers,
        args.device,
        args.dtype,
        not args.quiet,
        args.allow_mismatch,
        args.force,
    )
    for note in r["mismatch_notes"]:
        print(f"alexnet features: note: {note}", file=sys.stderr)
    print(
        f"wrote {r['images']:,} x {r['dim']} {r['dtype']} fc7 features ({r['bytes'] / 1e6:,.1f} MB) to {r['out']}"
    )
    return 0


def cmd_neighbors(args: argparse.Namespace) -> int:
    from .apps.retrieval import format_neighbors, run_neighbors

    _stdout_owner(args)  # a folder as --json is refused before the work
    r = run_neighbors(args.gallery, args.query, args.k, args.device, args.limit)
    if args.json:
        _print_json(r, args.json)
    print(format_neighbors(r), file=sys.stderr if args.json == "-" else sys.stdout)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import dataclasses

    from .engine.card import card_path_for, check_outputs, write_card
    from .engine.checkpoint import export_weights
    from .engine.inference import load_model

    fmt = args.format or ("onnx" if Path(args.out).suffix.lower() == ".onnx" else "safetensors")
    check_outputs([Path(args.out), card_path_for(args.out)], args.force)
    lm = load_model(args.weights)
    card = lm.extra["card"]
    if fmt == "onnx":
        from .engine.onnx_export import export_onnx

        r = export_onnx(lm, args.out, opset=args.opset, card=card)
        diff = r["max_abs_diff"]
        check = (
            "not checked (no onnxruntime)"
            if diff is None
            else f"onnxruntime vs PyTorch: max |diff| {diff:.1e}"
        )
        print(f"wrote {r['path']} (ONNX opset {r['opset']}; input {r['input']}; {check})")
    else:
        export_weights(
            args.out, lm.model.state_dict(), dataclasses.asdict(lm.model.cfg), lm.prep, card
        )
        print(f"wrote {args.out}")
    print(f"wrote {write_card(card, card_path_for(args.out), Path(args.out).name)}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .apps.convert import convert_caffe

    out = args.out or str(Path(args.model).with_suffix(".safetensors"))
    r = convert_caffe(args.model, out, args.mean, force=args.force)
    layers = ", ".join(f"{theirs}->{ours}" for ours, theirs in r["layers"].items())
    print(f"converted {args.model} ({layers})")
    print(f"wrote {r['weights']}")
    print(f"wrote {r['card']}")
    return 0


def cmd_visualize(args: argparse.Namespace) -> int:
    from .apps import visualize as V

    out = args.out or f"figures/{args.figure}"
    if args.figure == "filters":
        paths = V.filters(args.target, out)
    elif args.figure == "curves":
        paths = V.curves(args.target, out)
    else:
        if not args.data:
            raise ValueError(f"visualize {args.figure} needs --data DIR (a prepared dataset)")
        fn = {"predictions": V.predictions, "neighbors": V.neighbors, "confusion": V.confusion}[
            args.figure
        ]
        paths = fn(args.target, args.data, out)
    print("wrote " + ", ".join(paths))
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    import signal

    from .engine.train import EXIT_INTERRUPTED, EXIT_PREEMPTED, TrainingStopped
    from .interrupts import raising

    # SIGTERM between runs stops like Ctrl-C (inside a run, training's own handler saves a
    # checkpoint first); both leave every finished run in place.
    resume = "finished runs (and a cut run's checkpoint) are kept: rerun the same command to resume"
    try:
        with raising((signal.SIGTERM,)):
            return _experiment(args)
    except TrainingStopped as stopped:
        hint = f"; {resume}" if stopped.code in (EXIT_PREEMPTED, EXIT_INTERRUPTED) else ""
        print(f"alexnet experiment: {stopped}{hint}", file=sys.stderr)
        return stopped.code
    except KeyboardInterrupt:
        print(f"alexnet experiment: interrupted; {resume}", file=sys.stderr)
        return EXIT_INTERRUPTED


def _experiment(args: argparse.Namespace) -> int:
    from .apps import experiments as E

    if args.name == "relu-vs-tanh":
        lrs = (
            tuple(float(v) for v in args.lrs.split(",")) if args.lrs else (0.001, 0.003, 0.01, 0.03)
        )
        r = E.relu_vs_tanh(args.data, args.out or "runs/relu-vs-tanh", epochs=args.epochs or 10, lrs=lrs,
                           seeds=tuple(range(args.first_seed, args.first_seed + args.seeds)),
                           limit=args.limit, init=args.init)  # fmt: skip
        print(E.format_relu_tanh(r))
        print(
            f"results: {args.out or 'runs/relu-vs-tanh'}/relu_vs_tanh.json, figure: {r['figure'][0]}"
        )
    else:
        if not args.ablate:
            raise ValueError(
                f"experiment ablation needs --ablate NAMES (from {', '.join(sorted(E.ABLATIONS))})"
            )
        overrides = list(args.set or [])
        if args.limit:
            overrides.append(f"data.limit_train={args.limit}")
        r = E.ablation(
            args.data,
            args.out or "runs/ablation",
            args.ablate.split(","),
            args.preset,
            args.seeds,
            args.epochs,
            overrides,
            table_only=args.table_only,
            first_seed=args.first_seed,
        )
        print(E.format_ablation(r))
        print(f"results: {args.out or 'runs/ablation'}/ablation.json")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .apps.report import build_report

    r = build_report(args.run_dir, args.data, args.out)
    print(f"report: {r['html']} (and {r['markdown']})")
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from .bench import benchmark
    from .engine.distributed import resolve_device

    batches = args.batch_size or []
    if len(batches) > 1 and args.what != "model":
        raise ValueError(f"benchmark {args.what} takes one --batch-size, got {batches}")
    batch = batches[0] if batches else None
    try:
        dev = resolve_device(args.device)
    except RuntimeError as err:  # torch's own message for an unknown device string
        raise ValueError(f"--device {args.device!r}: {str(err).splitlines()[0]}") from None
    except ValueError:
        raise ValueError(
            f"--device {args.device!r}: no CUDA device is available here; use cpu or auto"
        ) from None
    # lrn, data and e2e have their GPU forms only when asked for: `make bench` and a bare
    # command on a GPU machine time the CPU pipeline they always did.
    gpu_form = args.device.startswith("cuda") and args.what in ("lrn", "data", "e2e")
    given = [f for f in ("prepared", "copies", "steps") if getattr(args, f) is not None]
    if given and not (gpu_form and args.what in ("data", "e2e")):
        raise ValueError(
            f"--{given[0]} is for `benchmark data|e2e --device cuda`; not used by {args.what} "
            f"on {dev}"
        )
    if gpu_form:
        from .bench import cuda

        if args.what == "lrn":
            result = cuda.bench_lrn_cuda(dev, repeats=args.repeats)
            text = cuda.format_lrn_cuda(result)
        else:
            if not args.prepared or not (Path(args.prepared) / "meta.json").is_file():
                raise ValueError(
                    f"benchmark {args.what} --device cuda reads a prepared directory: pass "
                    "--prepared DIR, made by `alexnet prepare` (its train split is replicated "
                    "--copies times)" + (f"; {args.prepared} is not one" if args.prepared else "")
                )
            if args.what == "data":
                result = cuda.bench_data_cuda(
                    args.prepared, dev, copies=args.copies or 20, batch=batch or 256,
                    steps=args.steps or 200,
                )  # fmt: skip
                text = cuda.format_data_cuda(result)
            else:
                result = cuda.bench_e2e_cuda(
                    args.prepared, dev, batch=batch or 256, steps=args.steps or 600,
                    copies=args.copies or 100,
                )  # fmt: skip
                text = cuda.format_e2e_cuda(result)
    elif args.what == "lrn":
        result = benchmark.bench_lrn(repeats=args.repeats)
        text = benchmark.format_lrn(result)
    elif args.what == "data":
        result = benchmark.bench_data(args.source, rounds=args.repeats if args.repeats != 5 else 3)
        text = benchmark.format_data(result)
    elif args.what == "model":
        precisions = args.precisions.split(",") if args.precisions else None
        result = benchmark.bench_model(
            batches or None, precisions, repeats=args.repeats, device=args.device,
            layouts=tuple(args.layouts.split(",")),
        )  # fmt: skip
        text = benchmark.format_model(result)
    elif args.what == "e2e":
        result = benchmark.bench_e2e(args.source, batch=batch or 64, steps=2 * args.repeats)
        text = benchmark.format_e2e(result)
    elif args.what == "conv":
        result = benchmark.bench_conv(
            batch=batch or 128,
            repeats=args.repeats,
            variant=args.model,
            input_size=args.input_size,
        )
        text = benchmark.format_conv(result)
    elif args.what == "scale":
        result = benchmark.bench_scale(batch=batch or 64)
        text = benchmark.format_scale(result)
    else:  # pragma: no cover - argparse restricts choices
        raise ValueError(f"unknown benchmark {args.what!r}")
    if args.json:
        _print_json(result, args.output)
        if args.output:
            print(text)
    else:
        print(text)
        if args.output:
            _print_json(result, args.output)
    return 0


# --------------------------------------------------------------------------------------


def _add_set(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help=help)


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(t) for t in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(
            f"must be positive integers, e.g. 128 or 128,512; got {text!r}"
        )
    return sizes


def _workers(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be auto or an integer >= 0, got {text!r}")
    return value


MAX_SIZE = 8192  # a shorter side past this is a typo, not a dataset (and would exhaust memory)


def _size(text: str) -> int | str:
    if text.strip().lower() == "native":
        return "native"
    try:
        side = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a whole number of pixels (e.g. 256) or 'native', got {text!r}"
        ) from None
    if side < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 pixel, got {side}")
    if side > MAX_SIZE:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_SIZE} pixels, got {side}")
    return side


def _int_at_least(lowest: int, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= {lowest}, got {text!r}") from None
    if value < lowest:
        raise argparse.ArgumentTypeError(f"must be >= {lowest}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _int_at_least(1, text)


def _device(text: str) -> str:
    """auto, cpu, cuda or cuda:N; whether a CUDA device exists is checked where it is used."""
    if re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not allowed; choose auto, cpu, cuda or cuda:N")


def _nonnegative_int(text: str) -> int:
    return _int_at_least(0, text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alexnet",
        description="AlexNet (NIPS 2012): the paper's network and recipe, from raw images to its tables.",
    )
    parser.add_argument("--version", action="version", version=f"alexnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="per-layer table of a model: shapes, parameters, multiply-adds")
    p.add_argument("--model", default="paper", help="paper | owt | small (default: paper)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--in-channels", type=int, default=None)
    p.add_argument("--input-size", type=int, default=None, help="square input side in pixels")
    p.add_argument(
        "--device",
        type=_device,
        default="auto",
        help="whose execution settings to show: auto | cpu | cuda[:N]",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print JSON (top-level 'params', 'macs', 'layers', 'execution')",
    )
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "prepare", help="the paper's preprocessing, once: 256 px central crops, mean image, PCA"
    )
    p.add_argument(
        "src",
        help="a class-folder/ImageNet directory, a CIFAR-10 or Fashion-MNIST directory, or the names cifar10 / fashion-mnist",
    )
    p.add_argument("dst", help="output directory (the prepared format; see `alexnet.data.dataset`)")
    p.add_argument(
        "--kind", default="auto", choices=["auto", "folder", "imagenet", "cifar10", "fashion-mnist"]
    )
    p.add_argument(
        "--workers", type=int, default=None, help="decoding processes (default: all cores)"
    )
    p.add_argument(
        "--size",
        type=_size,
        default=None,
        help="side of the stored central crop (default 256, §2; folders of images <= 64 px "
        "keep their native size), or 'native' to keep every image's size",
    )
    p.add_argument(
        "--quality", type=int, default=90, help="JPEG quality of the stored crops (default 90)"
    )
    p.add_argument(
        "--val-fraction", type=float, default=0.1, help="held-out share when SRC has no val split"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of that split (stratified, reproducible)"
    )
    p.add_argument("--val-labels", default=None, help="labels of a flat ImageNet val/ folder")
    p.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="images of more pixels are skipped as decompression bombs (default 89,478,485, "
        "Pillow's; raise it for large photos)",
    )
    p.add_argument("--force", action="store_true", help="rebuild even if DST is complete")
    p.add_argument("--no-download", action="store_true", help="never download a missing dataset")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train with the paper's recipe (or a preset) on prepared data")
    p.add_argument(
        "--preset", default=None, help="imagenet-paper | cifar10 | fashion-mnist | demo | finetune"
    )
    p.add_argument("--config", default=None, help="a YAML config file (copy a preset to start)")
    p.add_argument("--data", default=None, help="prepared data directory (sets data.path)")
    p.add_argument("--out", default=None, help="run directory (default runs/<preset>)")
    _add_set(p, "override a config value, e.g. --set optim.lr=0.02")
    p.add_argument("--resume", action="store_true", help="continue the latest checkpoint in --out")
    p.add_argument(
        "--force",
        action="store_true",
        help="start over in an --out that holds a run (replaces its run files, nothing else)",
    )
    p.add_argument(
        "--init-from",
        default=None,
        help="start from weights: checkpoint, .safetensors or torchvision .pth",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "evaluate", help="top-1/top-5 error of a model or an ensemble, centre or 10-crop"
    )
    p.add_argument(
        "weights",
        nargs="+",
        help="checkpoint(s), .safetensors or torchvision .pth; several = ensemble",
    )
    p.add_argument("--data", required=True, help="prepared data directory")
    p.add_argument("--split", default="val")
    p.add_argument("--views", default="center", choices=["center", "ten-crop"])
    p.add_argument(
        "--precision", default="fp32", help="fp32 (default), bf16 or fp16 where the device runs it"
    )
    p.add_argument("--batch-size", type=_positive_int, default=128)
    p.add_argument(
        "--workers", type=_workers, default="auto", help="decoding processes (default: auto)"
    )
    p.add_argument("--device", type=_device, default="auto")
    p.add_argument(
        "--json", default=None, metavar="FILE", help="write everything as JSON (- for stdout)"
    )
    p.add_argument(
        "--csv", default=None, metavar="FILE", help="write per-class accuracy as CSV (- for stdout)"
    )
    p.add_argument("--quiet", action="store_true")
    p.add_argument(
        "--allow-mismatch",
        action="store_true",
        help="deliberate transfer: run on data prepared at another size or with other class "
        "names (the model's per-channel mean replaces its mean image; labels by index)",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="top-k labels for image files or folders")
    p.add_argument("weights", help="checkpoint, .safetensors export or torchvision .pth")
    p.add_argument("inputs", nargs="+", help="image files and/or directories")
    p.add_argument("--top-k", type=_positive_int, default=5)
    p.add_argument("--views", default="center", choices=["center", "ten-crop"])
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--device", type=_device, default="auto")
    p.add_argument("--json", default=None, metavar="FILE", help="results as JSON (- for stdout)")
    p.add_argument("--csv", default=None, metavar="FILE", help="results as CSV (- for stdout)")
    p.add_argument("--quiet", action="store_true", help="no table and no progress on the console")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("features", help="fc7 (4096-d) vectors for every image of a prepared split")
    p.add_argument("weights")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="train")
    p.add_argument(
        "--out", required=True, help="output .npz (see alexnet.apps.retrieval for the format)"
    )
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    p.add_argument("--batch-size", type=_positive_int, default=128)
    p.add_argument(
        "--workers", type=_workers, default="auto", help="decoding processes (default: auto)"
    )
    p.add_argument("--device", type=_device, default="auto")
    p.add_argument("--quiet", action="store_true")
    p.add_argument(
        "--allow-mismatch",
        action="store_true",
        help="deliberate transfer: run on data prepared at another size or with other class "
        "names (the model's per-channel mean replaces its mean image; labels by index)",
    )
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("neighbors", help="exact k nearest gallery images by Euclidean fc7 distance")
    p.add_argument("--gallery", required=True, help="features .npz of the gallery")
    p.add_argument(
        "--query", default=None, help="features .npz of the queries (default: the gallery itself)"
    )
    p.add_argument("-k", type=_positive_int, default=6)
    p.add_argument("--limit", type=_positive_int, default=None, help="only the first N queries")
    p.add_argument("--device", type=_device, default="auto")
    p.add_argument("--json", default=None, metavar="FILE", help="as JSON (- for stdout)")
    p.set_defaults(func=cmd_neighbors)

    p = sub.add_parser(
        "export",
        help="weights + class names + preprocessing as one .safetensors file, or an ONNX graph",
    )
    p.add_argument("weights", help="checkpoint, .safetensors or torchvision .pth")
    p.add_argument("out", help="output .safetensors or .onnx")
    p.add_argument(
        "--format",
        choices=["safetensors", "onnx"],
        default=None,
        help="default: from OUT's suffix",
    )
    p.add_argument("--opset", type=_positive_int, default=20, help="ONNX opset (default 20)")
    p.add_argument("--force", action="store_true", help="replace OUT and its card if they exist")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("convert", help="other frameworks' AlexNet weights into ours")
    conv = p.add_subparsers(dest="source", required=True, metavar="caffe")
    c = conv.add_parser(
        "caffe", help="Caffe's bvlc_alexnet (.caffemodel, V1 or current format) -> .safetensors"
    )
    c.add_argument("model", help="the .caffemodel")
    c.add_argument("--mean", default=None, help="Caffe's mean image (.binaryproto)")
    c.add_argument(
        "--out", default=None, help="output .safetensors (default: beside MODEL, same name)"
    )
    c.add_argument("--force", action="store_true", help="replace OUT and its card if they exist")
    c.set_defaults(func=cmd_convert)

    p = sub.add_parser(
        "visualize",
        help="the paper's figures from your run: filters, predictions, neighbors, curves, confusion",
    )
    p.add_argument("figure", choices=["filters", "predictions", "neighbors", "curves", "confusion"])
    p.add_argument(
        "target",
        help="weights file (filters, predictions, neighbors, confusion) or run directory (curves)",
    )
    p.add_argument(
        "--data", default=None, help="prepared data directory (predictions, neighbors, confusion)"
    )
    p.add_argument(
        "--out", default=None, help="output path without extension (.png and .svg are written)"
    )
    p.set_defaults(func=cmd_visualize)

    p = sub.add_parser(
        "experiment", help="the paper's claims at small scale: relu-vs-tanh (Figure 1), ablation"
    )
    p.add_argument("name", choices=["relu-vs-tanh", "ablation"])
    p.add_argument("--data", required=True, help="cifar10 | fashion-mnist | a prepared directory")
    p.add_argument("--out", default=None, help="output directory (rerunning it resumes)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument(
        "--seeds",
        type=_positive_int,
        default=1,
        help="seeds 0..N-1 (or from --first-seed): relu-vs-tanh sweeps lrs on the first seed "
        "and repeats the best lr on the others; ablation runs every variant on each",
    )
    p.add_argument(
        "--first-seed",
        type=_nonnegative_int,
        default=0,
        help="the first seed (default 0); ablation: --first-seed 1 --seeds 1 runs only seed 1, "
        "e.g. one machine per seed, then gather the seedK folders in one --out and "
        "--table-only --seeds N; relu-vs-tanh: the lr sweep runs on this seed",
    )
    p.add_argument("--lrs", default=None, help="relu-vs-tanh: comma-separated learning-rate sweep")
    p.add_argument(
        "--init",
        default="pytorch",
        choices=["pytorch", "cuda-convnet"],
        help="relu-vs-tanh: PyTorch's init on inputs / 64, or cuda-convnet's example init on raw 0..255 inputs",
    )
    p.add_argument(
        "--ablate",
        default=None,
        help="ablation: comma-separated, e.g. lrn,overlap-pool,dropout,pca,towers",
    )
    p.add_argument(
        "--table-only",
        action="store_true",
        help="ablation: train nothing, rewrite the table (ablation.json/.csv/.md) from the "
        "runs finished so far",
    )
    p.add_argument("--preset", default=None, help="ablation: training preset (default from --data)")
    _add_set(p, "ablation: config override for every run")
    p.add_argument(
        "--limit", type=int, default=0, help="use only the first N training images (quick runs)"
    )
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser(
        "report", help="one self-contained HTML page (and Markdown) for a training run"
    )
    p.add_argument("run_dir")
    p.add_argument(
        "--data", default=None, help="prepared data for predictions/neighbours (default: the run's)"
    )
    p.add_argument("--out", default=None, help="output .html (default RUN_DIR/report.html)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "demo", help="the main job on the embedded default: small AlexNet on Fashion-MNIST"
    )
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    p.add_argument(
        "--data", default="data/fashion-mnist", help="where the prepared Fashion-MNIST goes"
    )
    p.add_argument("--epochs", type=int, default=None, help="override the demo preset's epochs")
    _add_set(p, "override a demo preset value")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("benchmark", help="speed figures measured next to their reference")
    p.add_argument(
        "what",
        choices=["lrn", "data", "model", "e2e", "scale", "conv"],
        help="lrn: our LRN vs PyTorch's; data: our input pipeline vs torchvision's; "
        "model: paper/owt vs torchvision's alexnet(); e2e: training from prepared data vs model only; "
        "scale: one process vs 2 DDP processes on the same cores; "
        "conv: conv2-conv5 with PyTorch's kernels vs in the Fourier domain",
    )
    p.add_argument(
        "--batch-size",
        type=_batch_sizes,
        default=None,
        help="batch (model: several, e.g. 128,512; default 128 on CPU, 256 on GPU; e2e 64 on CPU)",
    )
    p.add_argument(
        "--precisions", default=None, help="model: e.g. fp32,bf16 (default: bf16 only where native)"
    )
    p.add_argument(
        "--device",
        default="auto",
        help="model: auto (a GPU where there is one) | cpu | cuda; lrn, data, e2e: cuda for "
        "their GPU forms",
    )
    p.add_argument(
        "--layouts",
        default="NCHW,channels_last",
        help="model: memory formats to time (default NCHW,channels_last)",
    )
    p.add_argument("--model", default="paper", help="conv: paper | owt | small (default: paper)")
    p.add_argument("--input-size", type=int, default=None, help="conv: input side in pixels")
    p.add_argument(
        "--source",
        default=None,
        help="data: image folder (default ../shared/data/imagenet-samples)",
    )
    p.add_argument(
        "--json", action="store_true", help="print the result as JSON (top-level 'ratio')"
    )
    p.add_argument("--output", "-o", default=None, help="also write the JSON result to this file")
    p.add_argument("--repeats", type=_positive_int, default=5, help="timed rounds (default 5)")
    p.add_argument(
        "--prepared",
        default=None,
        help="data/e2e on a GPU: a prepared directory whose train split is replicated",
    )
    p.add_argument(
        "--copies",
        type=_positive_int,
        default=None,
        help="data/e2e on a GPU: copies of --prepared's train split (default 20 / 100)",
    )
    p.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        help="data/e2e on a GPU: timed batches (default 200 / 600)",
    )
    p.set_defaults(func=cmd_benchmark)
    return parser


# Commands whose loader workers outlive a SIGTERM sent to the whole group (they leave the
# stop to this process): SIGTERM unwinds them like Ctrl-C, so the workers are shut down
# rather than left writing errors to a closed connection.
_UNWINDING = ("evaluate", "predict", "features", "neighbors")


def main(argv: Sequence[str] | None = None) -> int:
    # Before torch loads: huge pages and a heap that keeps freed activations mapped, so
    # CPU steps do not re-fault ~1.4 GB of fresh pages each time (alexnet/allocator.py).
    from . import allocator, hardware

    allocator.configure()
    hardware.separate_compile_cache()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .config import ConfigError
    from .data.sources import DataError

    try:
        if args.command in _UNWINDING:
            from .interrupts import raising

            with raising((signal.SIGTERM,)):
                return int(args.func(args) or 0)
        return int(args.func(args) or 0)
    except (ConfigError, DataError, ValueError, FileNotFoundError, NotADirectoryError) as err:
        if os.environ.get("ALEXNET_DEBUG"):
            raise
        print(f"alexnet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `alexnet predict ... | head`: the reader has had enough
        with contextlib.suppress(OSError):  # no flush error at exit either
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a program ended by SIGPIPE: the output was cut short
    except KeyboardInterrupt:
        print(f"alexnet {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as err:  # a full disk, permissions, a vanished mount: not a bug of ours
        if os.environ.get("ALEXNET_DEBUG"):
            raise
        print(
            f"alexnet {args.command}: error: {_os_error_text(err, args.command, getattr(args, 'run_dir', None))}",
            file=sys.stderr,
        )
        return 1


def _os_error_text(err: OSError, command: str, out: Path | None = None) -> str:
    import errno

    what = err.strerror or str(err)
    text = f"{what}: {err.filename}" if err.filename else what
    hint = {
        errno.ENOSPC: "free some space or write somewhere else",
        errno.EDQUOT: "the disk quota is used up: free some space or write somewhere else",
        errno.EACCES: "check the permissions",
        errno.EPERM: "check the permissions",
        errno.EROFS: "the filesystem is read-only: write somewhere else",
    }.get(err.errno or 0)
    if hint:
        text += f" ({hint})"
    # After a full disk: every file is written whole or not at all (alexnet/atomic.py),
    # so say how to go on once there is space.
    if err.errno not in (errno.ENOSPC, errno.EDQUOT):
        return text
    if command == "prepare":
        text += "; the splits already written are whole: the same command continues"
    elif command == "train" and out is not None:
        try:
            resumable = (out / "checkpoint.pt").is_file()
        except OSError:
            return text
        if resumable:
            text += f"; {out / 'checkpoint.pt'} is whole: continue with --resume"
        else:
            text += "; no checkpoint was written yet: start again with --force"
    return text
