"""python -m peft_bottleneck.convert adapterhub SRC DST: an AdapterHub adapter (folder or Hub repo) to a PEFT one."""

from __future__ import annotations

import argparse
import sys

from .adapterhub import ConversionError, convert


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="python -m peft_bottleneck.convert", description=__doc__)
    sources = parser.add_subparsers(dest="source", required=True, metavar="{adapterhub}")
    adapterhub = sources.add_parser("adapterhub", help="an AdapterHub (adapters 1.x) bottleneck adapter",
                                    description="Convert an AdapterHub bottleneck adapter into a PEFT adapter folder "
                                    "(adapter_config.json + adapter_model.safetensors) that PeftModel.from_pretrained "
                                    "loads onto the same base model.")
    adapterhub.add_argument("src", help="folder with adapter_config.json and pytorch_adapter.bin / adapter.safetensors, "
                            "or a Hub repo id")
    adapterhub.add_argument("dst", help="output folder")
    adapterhub.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of SRC")
    adapterhub.add_argument("--include-head", action="store_true",
                            help="also copy AdapterHub's prediction head (head_config.json, adapterhub_head.safetensors)")
    return parser


def run(args) -> int:
    try:
        report = convert(args.src, args.dst, revision=args.revision, include_head=args.include_head)
    except (ConversionError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


def main(argv=None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
