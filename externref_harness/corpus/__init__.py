"""The conformance corpus: language-agnostic traces with the model's expected observations.

    format      the JSON format of a corpus file: load, validate, dump (`corpus/FORMAT.md`)
    scenarios   what the corpus holds: advisory regressions, the explorer's shortest traces,
                path traces; each written once and run at any chunk size the scenario allows
    write       runs each scenario on the model, writes the files (`python -m
                externref_harness.corpus --write corpus`), checks them up to date
    run         runs a corpus trace on an implementation in lockstep: `load_corpus`,
                `run_corpus_trace` (for other projects' own runners too)

It sits above the lockstep and the explorer (it runs both) and below the gate and the checks.
"""
