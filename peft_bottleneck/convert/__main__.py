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
    adapterhub.add_argument("--base-model", default=None,
                            help="the base model's Hub id or folder, written as base_model_name_or_path (default: "
                            "AdapterHub's model_name)")
    adapterhub.add_argument("--no-head", action="store_true",
                            help="leave AdapterHub's prediction head out (by default a transformers head class's "
                            "own head is carried over as a modules_to_save head)")
    return parser


def run(args) -> int:
    try:
        report = convert(args.src, args.dst, revision=args.revision, include_head=not args.no_head,
                         base_model=args.base_model)
    except (ConversionError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


def main(argv=None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
