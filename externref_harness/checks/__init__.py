"""The named checks of the main job and how each is driven.

    plan         `CHECKS`: model, lockstep, proofs, threads; what each runs, its options, its result
    fuzz_targets each Hypothesis machine as a target a campaign can run and replay
    proofs       the z3 proofs as a check: layout, offsets, sweep safety, counterexamples replayed

`check` and `fuzz` run these; they compose the layers below (search, lockstep, parallel, specs).
"""
