"""`externref-harness`: check, mutants, explore, replay and prove.

Every subcommand lives in its own module of this package with `add_arguments(parser)` and `run(args)`, and
an `EXIT_STATUS` line its `--help` ends with. Bad input exits 2 with one line on stderr,
`externref-harness <cmd>: error: <what>`; a failed check exits 1.
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import re
import sys
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType

from externref_harness import compiled
from externref_harness.catalogue import UnknownMutant
from externref_harness.errors import ECHO_LIMIT, UsageError, printable, shown
from externref_harness.native.build import BuildError
from externref_harness.native.library import LibraryError
from externref_harness.trace import TraceFormatError

#: (name, module, one-line help)
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("check", "externref_harness.cli.check", "run every check (the main job)"),
    ("mutants", "externref_harness.cli.mutants", "list the seeded bugs"),
    ("explore", "externref_harness.cli.explore", "exhaustive bounded search of the model's states"),
    ("replay", "externref_harness.cli.replay", "replay a saved trace on the model and the impl"),
    ("prove", "externref_harness.cli.prove", "z3 proofs: layout, offsets, sweep safety"),
    ("fuzz", "externref_harness.cli.fuzz", "a long campaign: worker processes sharing an example database"),
    ("gate", "externref_harness.cli.gate", "hold a native implementation to the seed, crash-isolated"),
    ("reference", "externref_harness.cli.reference", "build the C reference implementation, print its path"),
)
#: The status of a run cut short by Ctrl-C.
INTERRUPTED = 130
#: Longest error message printed (values in it are already cut; this bounds the rest).
MESSAGE_LIMIT = 400


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse quotes the bad value whole: cut each quoted value as every message does.
        message = re.sub(rf"'([^']{{{ECHO_LIMIT}}})[^']+'", r"'\1...'", message)
        self.exit(2, f"{self.prog}: error: {shown(message, MESSAGE_LIMIT)}\n")


def package_version() -> str:
    try:
        return version("externref-harness")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, ModuleType]]:
    parser = _Parser(
        prog="externref-harness",
        description=__doc__.splitlines()[0],
        epilog="Exit status: 0 success, 1 a check failed, 2 bad input, 130 interrupted; "
        "`externref-harness COMMAND --help` says what each command returns.",
    )
    parser.add_argument(
        "--version", action="version",
        version=f"externref-harness {package_version()}, model {compiled.mode()}",
        help="print the version and exit",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")
    modules: dict[str, ModuleType] = {}
    for name, module_name, help_text in COMMANDS:
        module = importlib.import_module(module_name)
        module.add_arguments(
            sub.add_parser(
                name,
                help=help_text,
                description=help_text,
                epilog=f"Exit status: {module.EXIT_STATUS}",
                prog=f"externref-harness {name}",
            )
        )
        modules[name] = module
    return parser, modules


def _tolerant_streams() -> None:
    """Whatever the output holds (a lone surrogate in a trace's note, a non-UTF-8 file name), a
    strict stdout or stderr prints it escaped rather than raising `UnicodeEncodeError`."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and stream.errors == "strict":
            stream.reconfigure(errors="backslashreplace")


def os_error_message(e: OSError) -> str:
    """`<file>: <reason>`, or the reason alone: never an empty part (no `error::`)."""
    what = e.strerror or str(e) or type(e).__name__
    if not e.filename:
        return what
    name = os.fsdecode(e.filename) if isinstance(e.filename, str | bytes) else str(e.filename)
    return f"{printable(name)}: {what}"


def main(argv: list[str] | None = None) -> int:
    _tolerant_streams()
    parser, modules = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or argparse's one-line error
        return e.code if isinstance(e.code, int) else 2
    command = args.command

    def error(message: str) -> int:
        print(f"externref-harness {command}: error: {shown(message, MESSAGE_LIMIT)}", file=sys.stderr)
        return 2

    try:
        status: int = modules[command].run(args)
    except (UsageError, UnknownMutant, TraceFormatError, LibraryError, BuildError) as e:
        return error(str(e))
    except OSError as e:
        return error(os_error_message(e))
    except KeyboardInterrupt:
        print(f"externref-harness {command}: interrupted", file=sys.stderr)
        return INTERRUPTED
    return status


if __name__ == "__main__":
    sys.exit(main())
