"""The `peft-bottleneck` command: one subcommand per job of the package.

    peft-bottleneck train [...]              your model and data (peft-bottleneck train --help)
    peft-bottleneck finetune [...]           the bundled demo (python -m peft_bottleneck.finetune)
    peft-bottleneck convert adapterhub SRC DST   an AdapterHub adapter to a PEFT one
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="peft-bottleneck", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{train,finetune,convert}")
    commands.add_parser("train", help="fine-tune your model with an adapter on your data", add_help=False)
    commands.add_parser("finetune", help="the bundled demo: MiniLM + an adapter on bundled data", add_help=False)
    commands.add_parser("convert", help="convert another library's adapter", add_help=False)
    if not argv or argv[0] in ("-h", "--help"):
        parser.parse_args(argv or ["--help"])
    command, rest = argv[0], argv[1:]
    if command == "train":
        from . import train

        return train.main(rest)
    if command == "finetune":
        from . import finetune

        sub = finetune.build_parser()
        sub.prog = "peft-bottleneck finetune"
        finetune.main(rest, parser=sub)
        return 0
    if command == "convert":
        from .convert import __main__ as converter

        sub = converter.build_parser(argparse.ArgumentParser(prog="peft-bottleneck convert",
                                                             description=converter.__doc__))
        return converter.run(sub.parse_args(rest))
    parser.parse_args(argv)  # an unknown command: argparse's message and exit code 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
