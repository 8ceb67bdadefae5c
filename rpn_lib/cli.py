"""The ``rpn-lib`` command line: parse, call one library function, report.

Each command is two small functions: ``_register_<name>(subparsers)`` declares its arguments
and ``cmd_<name>(args) -> int`` calls the library. Adding a command means writing those two
and listing the register function in :data:`COMMANDS`. No logic lives here that a notebook
would also need.

Errors a user can cause (:class:`~rpn_lib.errors.RpnLibError`, and ``FileNotFoundError`` /
``ValueError`` from their input) print one line ``rpn-lib: error: <message>`` on stderr and
exit with code 2; ``--debug`` shows the traceback instead. Argument errors are argparse's
(usage and message, exit 2).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from rpn_lib import __version__
from rpn_lib.errors import RpnLibError
from rpn_lib.presets import PRESETS

PROG = "rpn-lib"
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

USER_ERRORS: tuple[type[BaseException], ...] = (RpnLibError, FileNotFoundError, ValueError)
"""Exceptions reported as one line (exit 2) rather than as a crash."""


# --------------------------------------------------------------------------------------------
# synth
# --------------------------------------------------------------------------------------------


def _register_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="write a synthetic fetal-face landmark dataset",
        description="Generate phantom volumes with five landmarks and write a dataset folder "
        "(images/, landmarks/, splits.json, README.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", type=Path, required=True, help="dataset folder to create")
    p.add_argument("--n", type=int, default=152, help="number of cases")
    p.add_argument("--n-test", type=int, default=32, help="cases in the random test split")
    p.add_argument("--seed", type=int, default=0, help="dataset seed")
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small", help="spacing and volume shape")
    p.add_argument("--difficulty", default="standard", help="phantom difficulty level")
    p.add_argument("--overwrite", action="store_true", help="replace the dataset files in a non-empty --out")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    p.set_defaults(func=cmd_synth)


def cmd_synth(args: argparse.Namespace) -> int:
    """``rpn-lib synth``: :func:`rpn_lib.data.dataset.write_synthetic_dataset`."""
    from rpn_lib.data.dataset import write_synthetic_dataset

    out = write_synthetic_dataset(
        args.out, n=args.n, n_test=args.n_test, seed=args.seed, preset=args.preset,
        difficulty=args.difficulty, progress=args.progress, overwrite=args.overwrite,
    )
    n_test = args.n_test
    print(f"wrote {args.n} cases ({args.n - n_test} train, {n_test} test) to {out}")
    return 0


# --------------------------------------------------------------------------------------------
# parser and entry point
# --------------------------------------------------------------------------------------------

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_register_synth]
"""Register functions, one per subcommand, in the order ``--help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    """The full ``rpn-lib`` parser (global options and every subcommand)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="IG-RPN landmark detection in 3D volumes: data, training, detection, evaluation.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS:
        register(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    """The exception's message on one line (newlines folded), or its class name."""
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``rpn-lib`` with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, argument errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_USER_ERROR)
    try:
        return int(args.func(args))
    except USER_ERRORS as e:
        if args.debug:
            traceback.print_exc()
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
