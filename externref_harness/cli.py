"""`externref-harness`: check, mutants, and the commands later layers add.

Every subcommand lives in its own `cmd_*` module with `add_arguments(parser)` and `run(args)`.
Bad input exits 2 with one line on stderr; a failed check exits 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

from externref_harness.catalogue import UnknownMutant
from externref_harness.errors import UsageError
from externref_harness.trace import TraceFormatError

#: (name, module, one-line help)
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("check", "externref_harness.cmd_check", "run every check (the main job)"),
    ("mutants", "externref_harness.cmd_mutants", "list the seeded bugs"),
    ("explore", "externref_harness.cmd_explore", "exhaustive bounded search of the model's states"),
    ("replay", "externref_harness.cmd_replay", "replay a saved trace on the model and the impl"),
    ("prove", "externref_harness.cmd_prove", "z3 proofs: layout, offsets, sweep safety"),
    ("fuzz", "externref_harness.cmd_fuzz", "a long campaign: worker processes sharing an example database"),
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, ModuleType]]:
    parser = _Parser(prog="externref-harness", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    modules: dict[str, ModuleType] = {}
    for name, module_name, help_text in COMMANDS:
        module = importlib.import_module(module_name)
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
        modules[name] = module
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = modules[args.command].run(args)
    except (UsageError, UnknownMutant, TraceFormatError) as e:
        print(f"externref-harness {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        where = f" {e.filename}" if e.filename else ""
        print(f"externref-harness {args.command}: error:{where}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("externref-harness: interrupted", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
