"""The conformance gate: a native library held to the seed in child processes, with a verdict.

    cases          options, case results and the report (what the gate says)
    runner         `run_gate`: describe, corpus, search and threads cases, in order
    threads        the parallel check as the gate's `threads` case
    expectations   an expectations file: divergences a library is allowed to show
    reports        the report as JUnit and JSON for CI
    pytest_plugin  `pytest --externref-impl PATH.so` in an implementation's own suite
"""
