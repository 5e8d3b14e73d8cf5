"""The command line: the parser (`main`) and one module per command (`check`, `explore`, `replay`,
`replay_dir`, `prove`, `fuzz`, `gate`, `reference`, `mutants`), each with `add_arguments(parser)`
and `run(args)`, and `numbers`, the one argparse type of every whole-number option. The top
layer: nothing of the package imports it.

`externref-harness` is `main`; `python -m externref_harness.cli` runs it too.
"""

from externref_harness.cli.main import main

__all__ = ["main"]
