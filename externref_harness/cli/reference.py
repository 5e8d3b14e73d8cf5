"""`externref-harness reference`: build the C reference implementation and print its path.

The library is what `check --impl`, `replay --impl` and `gate` take. Each build (debug or release,
a seeded bug, a variant, AddressSanitizer) is compiled once with the system C compiler (`$CC`, else
`cc`) and cached by content hash.
"""

from __future__ import annotations

import argparse

from externref_harness.native.build import BUILDS, C_BUGS, C_VARIANTS, build_reference

EXIT_STATUS = "0 built (the path is printed), 2 bad arguments or the compiler failed."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--build", choices=BUILDS, default="debug", help="debug (assertions on) or release")
    p.add_argument(
        "--bug", metavar="NAME", default=None, choices=sorted(C_BUGS),
        help=f"compile in one seeded bug ({', '.join(C_BUGS)})",
    )  # fmt: skip
    p.add_argument(
        "--variant", metavar="NAME", default=None, choices=sorted(C_VARIANTS),
        help=f"a correct variant that is not seed-exact ({', '.join(C_VARIANTS)})",
    )  # fmt: skip
    p.add_argument("--asan", action="store_true", help="compile with -fsanitize=address (see the README)")
    p.add_argument(
        "--no-optional", action="store_true",
        help="leave out the optional symbols (num_filled_in_bump_chunk, elements, set chunk size)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    path = build_reference(
        args.build, args.bug, args.variant, sanitize=args.asan, no_optional=args.no_optional
    )
    print(path)
    return 0
