"""The ``alexnet`` command: parses arguments and hands over to the module that does the work."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from . import __version__


def _print_json(obj: object, path: str | None = None) -> None:
    text = json.dumps(obj, indent=2, default=str)
    if path:
        with open(path, "w") as f:
            f.write(text + "\n")
    else:
        print(text)


# --------------------------------------------------------------------------------------
# Subcommands


def cmd_info(args: argparse.Namespace) -> int:
    from .model import build_model
    from .summary import format_summary, summary_dict

    overrides = {"variant": args.model, "num_classes": args.num_classes}
    if args.in_channels is not None:
        overrides["in_channels"] = args.in_channels
    if args.input_size is not None:
        overrides["input_size"] = args.input_size
    info = summary_dict(build_model(**overrides))
    if args.json:
        _print_json(info)
    else:
        print(format_summary(info))
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from . import benchmark

    if args.what == "lrn":
        result = benchmark.bench_lrn(repeats=args.repeats)
        text = benchmark.format_lrn(result)
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
        "--json", action="store_true", help="print JSON (top-level 'params', 'macs', 'layers')"
    )
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("benchmark", help="speed figures measured next to their reference")
    p.add_argument("what", choices=["lrn"], help="lrn: our LRN vs PyTorch's")
    p.add_argument(
        "--json", action="store_true", help="print the result as JSON (top-level 'ratio')"
    )
    p.add_argument("--output", "-o", default=None, help="also write the JSON result to this file")
    p.add_argument("--repeats", type=int, default=5)
    p.set_defaults(func=cmd_benchmark)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # PyTorch's CPU allocator backs large tensors with transparent huge pages when this is
    # set before torch loads: first-touch page faults otherwise dominate AlexNet's big
    # activations on CPU (see benchmarks/README.md). An explicit user setting wins.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .config import ConfigError

    try:
        return int(args.func(args) or 0)
    except (ConfigError, ValueError, FileNotFoundError, NotADirectoryError) as err:
        if os.environ.get("ALEXNET_DEBUG"):
            raise
        print(f"alexnet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"alexnet {args.command}: interrupted", file=sys.stderr)
        return 130
