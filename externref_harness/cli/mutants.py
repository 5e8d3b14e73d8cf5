"""`externref-harness mutants [--json]`: the catalogue of seeded bugs."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from externref_harness.catalogue import all_mutants

EXIT_STATUS = "0 listed, 2 bad arguments."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a JSON list of {name, layer, description}")


def run(args: argparse.Namespace) -> int:
    mutants = all_mutants()
    if args.json:
        print(json.dumps([m.to_json() for m in mutants], indent=1))
        return 0
    table = Table("name", "layer", "description", title="Seeded bugs (select with --mutant NAME)")
    for m in mutants:
        table.add_row(m.name, m.layer, m.description)
    Console(width=140).print(table)
    return 0
