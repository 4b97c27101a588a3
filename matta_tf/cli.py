"""The `matta` command line.

Subcommands are registered by small `commands` modules in each package (each exposes
`register(subparsers)` and imports TensorFlow only inside the handlers), so `matta --help`
is fast and lists exactly the subcommands that exist.
"""
from __future__ import annotations

import argparse
import importlib
import sys

import matta_tf

COMMAND_MODULES = (
    "matta_tf.commands",
    "components.commands",
    "pipelines.commands",
    "serving.commands",
    "bench.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="matta",
        description="Train elastic MatTA ranking students on TFX and serve them with TF Serving.",
    )
    parser.add_argument("--version", action="version", version=f"matta {matta_tf.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # that package has no commands (yet); anything else is a bug
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as err:
        print(f"matta {args.command}: error: {err}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
