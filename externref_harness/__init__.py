"""externref-harness: drivers, catalogues and the command line around `model`, `impl` and `specs`."""
