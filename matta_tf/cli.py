"""The `matta` command line.

Subcommands are registered by small `commands` modules in each package (each exposes
`register(subparsers)` and imports TensorFlow only inside the handlers), so `matta --help`
is fast and lists exactly the subcommands that exist.

Output policy (one place for every subcommand):
- TensorFlow / absl / Beam / TFX logging and Python warnings are silenced by default: on a
  CPU box their start-up lines ("failed call to cuInit", oneDNN notices) read like errors.
  `-v` brings them back, and adds tracebacks to errors.
- `-q` / `--quiet` prints nothing on stdout; errors still go to stderr, the exit status tells.
- Errors: one line `matta <command> [<action>]: error: <what is wrong>` on stderr.
  User errors (bad values, missing or unreadable files, bad config) exit 2; anything else
  is an internal error, exits 1 and says to rerun with `-v` for the traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
import warnings

import yaml

import matta_tf
from matta_tf.console import filtered_stderr

COMMAND_MODULES = (
    "matta_tf.commands",
    "components.commands",
    "components.students_commands",
    "pipelines.commands",
    "serving.commands",
)

# Loggers of the libraries matta drives; at the default verbosity only their errors show.
LIBRARY_LOGGERS = ("tensorflow", "absl", "apache_beam", "tfx", "tensorflow_transform",
                   "tensorflow_data_validation", "tensorflow_model_analysis", "ml_metadata",
                   "h5py", "matplotlib", "airflow")


class UsageError(ValueError):
    """A mistake in what the user asked for (exit status 2, no traceback)."""


# Exceptions that mean "the input is wrong", not "matta is broken".
USER_ERRORS = (ValueError, OSError, yaml.YAMLError)


class _DefaultsFormatter(argparse.HelpFormatter):
    """Shows every option's default (also for options without help text)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" in text or any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            return text
        if action.option_strings and action.nargs != 0:
            return f"{text} (default: %(default)s)".strip()
        return text


def _apply_formatter(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = _DefaultsFormatter
    for action in parser._actions:
        if action.help is None and action.option_strings and action.nargs != 0 and not any(
                action.default is v for v in (None, False, argparse.SUPPRESS)):
            action.help = "(default: %(default)s)"  # argparse prints nothing for help=None
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _apply_formatter(child)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="matta",
        description="Train elastic MatTA ranking students on TFX and serve them with TF Serving.",
    )
    parser.add_argument("--version", action="version", version=f"matta {matta_tf.__version__}")
    level = parser.add_mutually_exclusive_group()
    level.add_argument("-v", "--verbose", action="count", default=0,
                       help="show TensorFlow/Beam/TFX logs and warnings, and tracebacks on errors")
    level.add_argument("-q", "--quiet", action="store_true",
                       help="print nothing on stdout (errors still go to stderr)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)  # a broken module is an error, not a skip
    _apply_formatter(parser)
    return parser


def configure_output(verbose: int) -> None:
    """Library logging and warnings for this process (and the processes it starts)."""
    # Read by TensorFlow's C++ runtime when it loads (handlers import TF lazily, so this is
    # before), and inherited by subprocesses such as Beam workers and `matta serve`.
    # The CLI owns this setting: -v shows TF's info lines, the default only its fatal ones.
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0" if verbose else "3"
    if verbose:
        return
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    warnings.simplefilter("ignore")
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    with contextlib.suppress(ImportError):  # absl is a TensorFlow dependency; silence it if loaded
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)


def command_name(args: argparse.Namespace) -> str:
    """`matta teacher fit` -> "teacher fit" (the command and any chosen action)."""
    parts = [args.command]
    for key, value in sorted(vars(args).items()):
        if key.endswith("_command") and key != "command" and isinstance(value, str):
            parts.append(value)
    return " ".join(p for p in parts if p)


def _one_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    if isinstance(err, KeyError) and len(err.args) == 1:
        text = f"missing key {err.args[0]!r}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] + (" (...)" if len(lines) > 1 else "") if lines else type(err).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    configure_output(args.verbose)
    where = f"matta {command_name(args)}"
    # Libraries the handlers drive parse sys.argv themselves (absl flags: `-v` would be
    # read as its --verbosity; Beam's PipelineOptions() reads sys.argv[1:]); matta's own
    # options are not theirs.
    sys.argv = sys.argv[:1]
    try:
        with contextlib.ExitStack() as stack:
            if not args.verbose:
                stack.enter_context(filtered_stderr())
            if args.quiet:
                stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
            result = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if args.verbose:
            import traceback

            traceback.print_exc()
        print(f"{where}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - the CLI's one error boundary; never silent
        if args.verbose:
            import traceback

            traceback.print_exc()
            print(f"{where}: internal error: {type(err).__name__}: {_one_line(err)}", file=sys.stderr)
        else:
            print(f"{where}: internal error: {type(err).__name__}: {_one_line(err)} "
                  "(rerun with -v for the traceback)", file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
