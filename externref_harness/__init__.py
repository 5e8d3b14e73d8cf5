"""externref-harness: drivers, catalogues and the command line around `model`, `impl` and `specs`."""

from externref_harness.compiled import use_fresh_extensions

# Before any compiled module can be imported: a stale extension must never run (see `compiled`).
use_fresh_extensions()
