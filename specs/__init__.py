"""The specification: numbered invariants over model states (`SPEC.md`) and z3 proofs."""
