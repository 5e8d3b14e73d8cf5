"""The conformance corpus: what it holds, that it is valid and up to date, that it runs clean on the
model, the Python port and the C reference, and that it catches what both sides of a lockstep miss.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from interpreted import ran_interpreted
from one_line import assert_one_line_exit_2

from externref_harness import catalogue
from externref_harness.cli.main import main
from externref_harness.corpus import scenarios
from externref_harness.corpus import write as corpus
from externref_harness.corpus.format import CORPUS_VERSION, CorpusTrace, load_file
from externref_harness.corpus.run import (
    CorpusResult,
    cannot_run,
    corpus_files,
    load_corpus,
    run_config,
    run_corpus_trace,
)
from externref_harness.corpus.write import ScenarioError, build_corpus
from externref_harness.errors import UsageError
from externref_harness.impl.adapter import InProcessImpl
from externref_harness.isolation.pool import ChildPool
from externref_harness.lockstep import runner as lockstep
from externref_harness.lockstep.targets import PYTHON, native_target
from externref_harness.model import ops, protocol
from externref_harness.model.mutants import MODEL_MUTANTS
from externref_harness.native.build import build_reference
from externref_harness.search.model_check import REQUIRED_EVENTS
from externref_harness.trace import Trace, TraceFormatError, save

REPO_CORPUS = Path(__file__).resolve().parents[2] / "corpus"
TRACES = load_corpus()
BY_ID = {t.id: t for t in TRACES}
ADVISORIES = ("CVE-2021-39216", "CVE-2021-39218", "CVE-2022-24791", "CVE-2022-31146", "CVE-2022-23636")


def _ids(trace: CorpusTrace) -> str:
    return trace.id


# --- what the corpus holds -------------------------------------------------------------------------


def test_the_shipped_corpus_is_the_repository_s() -> None:
    assert corpus.shipped_corpus_dir().resolve() == REPO_CORPUS.resolve()
    assert len(TRACES) == len(corpus_files(REPO_CORPUS))


def test_the_corpus_holds_every_origin_in_both_builds() -> None:
    origins = Counter(t.origin for t in TRACES)
    assert all(n == 2 for n in origins.values()), "each scenario once per build"
    for m in MODEL_MUTANTS:
        assert origins[f"explorer: shortest trace of {m.name}"] == 2, m.name
    for cve in ADVISORIES:
        assert origins[f"advisory regression: {cve}"] == 2, cve
    for label in REQUIRED_EVENTS:
        assert origins[f"path coverage: {label}"] == 2, label
    large = [t for t in TRACES if t.config.chunk_size == 512 and t.scenario_name == t.name]
    assert len(large) >= 6
    assert all(any(isinstance(op, ops.InsertMany) for op in t.operations) for t in large)
    assert {t.config.build for t in TRACES} == {"debug", "release"}
    assert all(t.config.mutant is None for t in TRACES)


def test_each_path_trace_reaches_its_path_and_ends_quiescent() -> None:
    for t in TRACES:
        assert t.steps[-1].teardown or not any(s.teardown for s in t.steps)
        if not t.origin.startswith("path coverage: "):
            continue
        label = t.origin.removeprefix("path coverage: ").split(" at chunk size")[0]
        seen = set()
        for s in t.steps:
            if s.teardown:
                continue
            seen.update(s.expect["paths"])
            seen.update(["values-dropped"] if s.expect["dropped"] else [])
            seen.update([s.expect["result"]["kind"]])
            if s.expect["result"] == {"kind": "err", "value": "chunk-full"}:
                seen.add("try_insert:chunk-full")
        assert label in seen, (t.id, label)


def test_every_seeded_model_bug_is_caught_by_its_own_traces() -> None:
    caught = Counter(m for t in TRACES for m in t.catches)
    assert set(caught) == {m.name for m in MODEL_MUTANTS}
    for t in TRACES:
        origin = t.origin.split(" at chunk size ")[0]  # its version at the seed's chunk catches it too
        if origin.startswith("explorer: shortest trace of "):
            assert origin.removeprefix("explorer: shortest trace of ") in t.catches, t.id
        if origin.startswith("advisory regression: "):
            assert origin.removeprefix("advisory regression: ").lower() in t.catches, t.id


@pytest.mark.parametrize("trace", [t for t in TRACES if t.catches], ids=_ids)
def test_with_a_bug_it_catches_on_the_trace_fails(trace: CorpusTrace) -> None:
    """`catches` is true of the lockstep runner too: with each such bug on, the run fails."""
    for mutant in trace.catches:
        result = run_corpus_trace(trace, InProcessImpl(), mutant=mutant)
        assert not result.passed, (trace.id, mutant)
        assert result.step is not None


# --- valid and up to date --------------------------------------------------------------------------


def _schema() -> dict[str, object]:
    loaded: dict[str, object] = json.loads((REPO_CORPUS / corpus.SCHEMA_FILE).read_text())
    return loaded


def test_the_schema_is_a_json_schema_and_validates_every_file() -> None:
    schema = _schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for path in corpus_files(REPO_CORPUS):
        errors = list(validator.iter_errors(json.loads(path.read_text())))
        assert not errors, f"{path}: {errors[0].message}"


def _first_file() -> Path:
    return corpus_files(REPO_CORPUS)[0]


BROKEN = {
    "no expect": lambda o: o["steps"][0].pop("expect"),
    "an unknown operation": lambda o: o["steps"][0]["operation"].update(op="Frobnicate"),
    "a string for an int field": lambda o: o["steps"][0]["operation"].update(size="8"),
    "a mutant in the config": lambda o: o["config"].update(mutant="cve-2021-39216"),
    "another version": lambda o: o.update(corpus_version=CORPUS_VERSION + 1),
    "an unknown result kind": lambda o: o["steps"][0]["expect"]["result"].update(kind="maybe"),
    "a negative ref": lambda o: o["steps"][0]["expect"].update(dropped=[-1]),
    "an extra top-level field": lambda o: o.update(mutant=None),
    "an object for a value": lambda o: o["steps"][0]["expect"]["result"].update(value={"handle": 0}),
}


@pytest.mark.parametrize("breakage", sorted(BROKEN))
def test_a_broken_file_fails_the_schema_and_the_loader_in_one_line(breakage: str, tmp_path: Path) -> None:
    obj = json.loads(_first_file().read_text())
    BROKEN[breakage](obj)
    assert list(jsonschema.Draft202012Validator(_schema()).iter_errors(obj)), breakage
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(obj))
    with pytest.raises(TraceFormatError) as e:
        load_file(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_the_loader_also_refuses_a_scenario_step_after_the_teardown(tmp_path: Path) -> None:
    """An ordering the schema cannot state."""
    obj = BY_ID["debug/path-gc-canary-found"].to_json()
    obj["steps"].append({**obj["steps"][0], "teardown": False})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(obj))
    with pytest.raises(
        TraceFormatError, match=r"bad\.json: step 10: a scenario step after the teardown began"
    ):
        load_file(bad)


def test_bad_corpus_directories_are_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no corpus traces"):
        load_corpus(tmp_path)
    with pytest.raises(UsageError, match="no such corpus directory"):
        load_corpus(tmp_path / "missing")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(TraceFormatError, match=r"x\.json is not JSON"):
        load_corpus(tmp_path)
    (tmp_path / "x.json").write_text(json.dumps({"format": "externref-harness-trace"}))
    with pytest.raises(TraceFormatError, match=r"x\.json: not a corpus trace"):
        load_corpus(tmp_path)


def test_regenerating_the_traces_reproduces_the_files_byte_for_byte() -> None:
    """Fast: every hand-written scenario, and each explorer trace re-run from its own steps (the
    next test runs the explorer too)."""
    from externref_harness.corpus.scenarios import (
        SEED_CHUNK_VERSIONS,
        Scenario,
        advisory_scenarios,
        at_seed_chunk,
        large_chunk_scenarios,
        path_scenarios,
    )

    expected = {}
    small = {s.name: s for s in advisory_scenarios() + path_scenarios()}
    versions = [at_seed_chunk(small[n], fill) for n, fill in SEED_CHUNK_VERSIONS.items() if n in small]
    for build in corpus.BUILDS:
        for s in [*small.values(), *versions, *large_chunk_scenarios()]:
            expected[f"{build}/{s.name}"] = corpus.corpus_trace(s, build)
    for t in TRACES:
        if t.origin.startswith("explorer: "):
            version_of = None if t.scenario_name == t.name else t.scenario_name
            s = Scenario(t.name, t.description, t.origin, t.config, t.operations, version_of=version_of)
            expected[t.id] = corpus.corpus_trace(s, t.build)
    assert sorted(expected) == sorted(BY_ID)
    for trace in expected.values():
        path = REPO_CORPUS / corpus.relative_path(trace)
        assert path.read_text() == trace.dumps(), (
            f"{path} is out of date: python -m externref_harness.corpus.write --write corpus"
        )
    assert (REPO_CORPUS / corpus.SCHEMA_FILE).read_text() == json.dumps(corpus.schema(), indent=1) + "\n"


def test_regenerating_the_whole_corpus_reproduces_the_checked_in_files() -> None:
    """The explorer included (a few seconds): `python -m externref_harness.corpus.write --check corpus`."""
    assert corpus.stale_files(REPO_CORPUS) == []


def test_the_check_command_reports_a_stale_or_extra_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(REPO_CORPUS, tmp_path / "c", symlinks=False)
    target = tmp_path / "c" / "debug" / "path-misuse.json"
    target.write_text(target.read_text().replace('"dropped-handle"', '"no-such-handle"'))
    (tmp_path / "c" / "release" / "leftover.json").write_text("{}")
    assert corpus.stale_files(tmp_path / "c", list(TRACES)) == [
        "debug/path-misuse.json: differs from the generated file",
        "release/leftover.json: no scenario makes it",
    ]


# --- running it ------------------------------------------------------------------------------------


@pytest.mark.parametrize("trace", TRACES, ids=_ids)
def test_every_trace_runs_clean_on_the_model_and_the_python_port(trace: CorpusTrace) -> None:
    result = run_corpus_trace(trace, InProcessImpl())
    assert result.passed, result.problem
    assert result.name == trace.id and result.step is None and result.expected_seen == frozenset()


@pytest.mark.parametrize("build", ["debug", "release"])
def test_every_trace_of_a_build_runs_clean_on_the_c_reference(build: str) -> None:
    target = native_target(build_reference(build))
    options = lockstep.LockstepOptions(impl_name=target.name)
    traces = load_corpus(build=build)  # type: ignore[arg-type]
    assert len(traces) == len(TRACES) // 2
    for trace in traces:
        target.config(trace.config, trace.config.build, trace.config.chunk_size)  # it can run it
        result = run_corpus_trace(trace, target.adapter_factory(), options)
        assert result.passed, f"{trace.id}: {result.problem}"


def _skip_the_pre_gc(
    rt: protocol.RuntimeApi[object], refs: Sequence[object | None], cfg: object
) -> None:
    """`move_refs_into_table` as a careless edit might leave it: no pre-GC (still no GC between
    the inserts, so nothing is swept early and every invariant holds)."""
    previous = rt.set_gc_okay(False)
    for r in refs:
        if r is not None:
            rt.insert_without_gc(r)
    rt.set_gc_okay(previous)


def test_a_change_to_the_shared_protocol_fails_the_expectations_though_the_lockstep_agrees(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """The edit is a patched module global, which a compiled model (calling the protocol
    directly) never sees: a compiled process runs this test again in an interpreted child."""
    if ran_interpreted(request):
        return
    trace = BY_ID["debug/path-gc-wasm-frame-without-stack-map"]
    assert run_corpus_trace(trace, InProcessImpl()).passed
    monkeypatch.setattr(protocol, "move_refs_into_table", _skip_the_pre_gc)
    # Both sides run the one protocol, so they still agree with each other...
    driven = lockstep.drive(trace.config, trace.all_operations, InProcessImpl(), until_first=True)
    assert driven.first is None
    # ...but the model no longer observes what the corpus recorded.
    result = run_corpus_trace(trace, InProcessImpl())
    assert not result.passed
    assert result.step == 2  # CallWasm: the pre-GC that allocated the chunk is gone
    assert result.problem.startswith("the model no longer observes what the corpus expects at step 2")
    assert "shared code changed" in result.problem
    caught = [t.id for t in TRACES if not run_corpus_trace(t, InProcessImpl()).passed]
    assert len(caught) >= 10, caught


def _edited(trace: CorpusTrace, edit: Callable[[list[dict[str, Any]]], None], tmp_path: Path) -> CorpusTrace:
    obj = trace.to_json()
    edit(obj["steps"])
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(obj))
    return load_file(path)


def test_a_file_whose_expectations_or_teardown_differ_from_the_model_fails_where_they_do(
    tmp_path: Path,
) -> None:
    trace = BY_ID["debug/advisory-cve-2021-39216"]  # teardown: Drop(3) Drop(4) Drop(5) Drop(6) Gc()
    assert [str(op) for op in trace.all_operations[-5:]] == [
        "Drop(h=3)",
        "Drop(h=4)",
        "Drop(h=5)",
        "Drop(h=6)",
        "Gc()",
    ]

    def drop_nothing(steps: list[dict[str, Any]]) -> None:
        steps[-1]["expect"]["dropped"] = []

    result = run_corpus_trace(_edited(trace, drop_nothing, tmp_path), InProcessImpl())
    assert result.step == 17
    assert "dropped: expected [], observed [0, 1, 2]" in result.problem

    def swap(steps: list[dict[str, Any]]) -> None:
        steps[-5], steps[-4] = steps[-4], steps[-5]

    result = run_corpus_trace(_edited(trace, swap, tmp_path), InProcessImpl())
    assert result.step == 13
    assert "its teardown now runs Drop(h=3) here, the file lists Drop(h=4)" in result.problem

    def cut(steps: list[dict[str, Any]]) -> None:
        del steps[-1]

    result = run_corpus_trace(_edited(trace, cut, tmp_path), InProcessImpl())
    assert result.step == 16
    assert "after step 16: its teardown needs more steps (next: Gc())" in result.problem


def test_an_implementation_bug_fails_the_lockstep_not_the_expectations() -> None:
    trace = BY_ID["debug/path-values-dropped"]
    result = run_corpus_trace(trace, InProcessImpl(), mutant="impl-early-free")
    assert not result.passed
    assert result.problem.startswith("ctypes impl fails at step 3")
    assert "no longer observes" not in result.problem


def test_a_c_bug_fails_the_corpus() -> None:
    target = native_target(build_reference("debug", bug="c-early-free"))
    failed = [
        t.id
        for t in load_corpus(build="debug")
        if not run_corpus_trace(
            t, target.adapter_factory(), lockstep.LockstepOptions(impl_name=target.name)
        ).passed
    ]
    assert failed


def _first_failure(pool: ChildPool, traces: Sequence[CorpusTrace]) -> CorpusResult | None:
    try:
        for trace in traces:
            result = run_corpus_trace(trace, pool.adapter())
            if not result.passed:
                return result
        return None
    finally:
        pool.close()


def test_through_a_child_process_the_corpus_passes_and_a_crash_or_hang_is_a_failing_step() -> None:
    assert _first_failure(ChildPool(build_reference("debug")), load_corpus(build="debug")) is None
    crash = _first_failure(
        ChildPool(build_reference("release", bug="c-wild-read")), load_corpus(build="release")
    )
    assert crash is not None and crash.name == "release/advisory-cve-2021-39218"
    assert crash.step == 15 and "killed by SIGSEGV" in crash.problem  # the second Gc()
    hang = _first_failure(
        ChildPool(build_reference("debug", bug="c-gc-hang"), step_timeout=1.0), load_corpus(build="debug")
    )
    assert hang is not None and "did not answer within 1 s" in hang.problem


def test_the_lockstep_s_levels_and_expected_divergences_apply_to_corpus_runs() -> None:
    """The correct but not seed-exact C variant orders the chunk differently: strict fails there,
    and an expected divergence passes, reported in `expected_seen`."""
    target = native_target(build_reference("debug", variant="c-loose"))
    trace = BY_ID["debug/explorer-cve-2021-39216"]
    assert cannot_run(target, trace.config) is None
    strict = run_corpus_trace(trace, target.adapter_factory(), lockstep.LockstepOptions(impl_name="loose"))
    assert not strict.passed and strict.step == 6 and "[table.chunk-slots]" in strict.problem
    options = lockstep.LockstepOptions(expected=frozenset({"table.chunk-slots"}))
    expected = run_corpus_trace(trace, target.adapter_factory(), options)
    assert expected.passed and expected.expected_seen == frozenset({"table.chunk-slots"})


def test_a_fixed_chunk_library_runs_every_scenario_in_some_version() -> None:
    """The seed's chunk is a constant: a library without `xr_table_new_with_chunk_size` runs the
    traces that run at any chunk size at its own, and the other scenarios in their 512 version."""
    target = native_target(build_reference("debug", no_optional=True))
    traces = load_corpus(build="debug")
    reasons = {t.id: cannot_run(target, t) for t in traces}
    assert all((why is None) == BY_ID[i].runs_at(512) for i, why in reasons.items())
    assert {t.scenario_name for t in traces if reasons[t.id] is None} == {t.scenario_name for t in traces}
    why = str(reasons["debug/path-insert-slow-without-gc"])
    assert why.startswith("written for a chunk of 2 slots;") and "fixed chunk of 512" in why
    assert "--chunk-size" not in why  # no such option was given
    assert "a release trace;" in str(cannot_run(target, BY_ID["release/path-misuse"]))
    assert "is a debug build" in str(cannot_run(target, BY_ID["release/path-misuse"]))
    misuse = BY_ID["debug/path-misuse"]
    assert run_config(target, misuse).chunk_size == 512
    assert run_corpus_trace(misuse, target.adapter_factory(), chunk_size=512).passed
    with pytest.raises(ValueError, match="does not run at a chunk of 512"):
        run_corpus_trace(BY_ID["debug/path-insert-slow-without-gc"], target.adapter_factory(), chunk_size=512)


def test_the_traces_marked_any_chunk_size_observe_the_same_at_other_chunks() -> None:
    """What `any_chunk_size` claims, on the Python port: the trace passes at other chunk sizes, and
    a trace not so marked does not."""
    port = PYTHON.adapter_factory
    marked = [t for t in TRACES if t.any_chunk_size and t.build == "debug"]
    assert len(marked) >= 20
    for t in marked:
        for size in (3, 256, 512):
            result = run_corpus_trace(t, port(), chunk_size=size)
            assert result.passed, (t.id, size, result.problem)
    unmarked = BY_ID["debug/path-insert-slow-without-gc"]
    assert not unmarked.any_chunk_size
    moved = run_corpus_trace(replace(unmarked, any_chunk_size=True), port(), chunk_size=512)
    assert not moved.passed and "no longer observes what the corpus expects" in moved.problem


def test_every_scenario_has_a_version_at_the_seed_s_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    groups: dict[str, list[CorpusTrace]] = {}
    for t in TRACES:
        groups.setdefault(f"{t.build}/{t.scenario_name}", []).append(t)
    assert all(any(t.runs_at(512) for t in group) for group in groups.values())
    versions = [t for t in TRACES if t.scenario_name != t.name]
    assert versions and all(t.config.chunk_size == 512 and t.name.endswith("-chunk-512") for t in versions)
    # The generator refuses a scenario that needs a small chunk and has no version at 512.
    monkeypatch.delitem(scenarios.SEED_CHUNK_VERSIONS, "path-insert-slow-without-gc")
    with pytest.raises(ScenarioError, match=r"path-insert-slow-without-gc .*no version runs at the seed"):
        build_corpus()


# --- replay DIR, replay --mutant / --no-mutant -----------------------------------------------------


def test_replay_a_directory_prints_a_line_per_trace_and_a_total(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(REPO_CORPUS / "debug")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(TRACES) // 2 + 1
    assert all(line.startswith("pass  ") for line in lines[:-1])
    assert lines[-1] == f"{len(TRACES) // 2} traces on ctypes impl: {len(TRACES) // 2} passed, 0 failed"


def test_replay_a_directory_on_a_library_skips_the_other_build(capsys: pytest.CaptureFixture[str]) -> None:
    path = build_reference("release")
    assert main(["replay", str(REPO_CORPUS), "--impl", str(path)]) == 0
    out = capsys.readouterr().out
    half = len(TRACES) // 2
    assert f"{len(TRACES)} traces on externref-c-reference" in out
    assert f"{half} passed, 0 failed, {half} skipped" in out
    assert "skip  debug/" in out and "is a release build" in out


def _saved_failure(tmp_path: Path) -> Path:
    """A trace saved with a seeded bug on, that fails under it."""
    trace = BY_ID["debug/explorer-cve-2022-24791"]
    cfg = trace.config.__class__(**{**trace.to_json()["config"], "mutant": "cve-2022-24791"})
    return save(Trace(cfg, trace.operations, "I1 ..."), tmp_path / "saved" / "failure.json")


def test_replay_a_directory_fails_on_a_failing_trace_and_no_mutant_confirms_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = _saved_failure(tmp_path)
    shutil.copy(REPO_CORPUS / "debug" / "path-misuse.json", saved.parent / "corpus.json")
    assert main(["replay", str(saved.parent)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  failure.json (trace, debug, mutant=cve-2022-24791): model fails at step 5: I1" in out
    assert "pass  corpus.json (corpus, debug)" in out
    assert out.splitlines()[-1] == "2 traces on ctypes impl: 1 passed, 1 failed"
    assert main(["replay", str(saved.parent), "--no-mutant"]) == 0
    assert main(["replay", str(saved), "--no-mutant"]) == 0
    assert "mutant=None" in capsys.readouterr().out
    assert main(["replay", str(saved.parent), "--mutant", "precise-root-uncounted"]) == 1


def test_replay_mutant_on_a_corpus_file_compares_its_expectations(capsys: pytest.CaptureFixture[str]) -> None:
    path = REPO_CORPUS / "debug" / "advisory-cve-2021-39216.json"
    assert main(["replay", str(path)]) == 0
    out = capsys.readouterr().out
    assert "expect Ok dropped=[0, 1, 2] paths=['gc:no-canary']" in out and out.endswith("no failure\n")
    assert main(["replay", str(path), "--mutant", "cve-2021-39216"]) == 1
    out = capsys.readouterr().out
    assert ">> 5. CallWasm(args=(0, 1, 2))" in out
    assert "the model fails at step 5: I1 no reachable ref is freed" in out
    assert "with cve-2021-39216 on, the model observes other than the corpus expects at step 5" in out


def test_replay_refuses_bad_directories_and_mutants_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus_file = str(REPO_CORPUS / "debug" / "path-misuse.json")
    assert_one_line_exit_2(["replay", str(tmp_path)], capsys, "no trace files")
    assert_one_line_exit_2(
        ["replay", corpus_file, "--mutant", "no-such-bug"], capsys, "unknown mutant 'no-such-bug'"
    )
    proof = next(m.name for m in catalogue.all_mutants() if m.layer == "specs")
    assert_one_line_exit_2(["replay", corpus_file, "--mutant", proof], capsys, "runs no proof")
    release = str(build_reference("release"))
    assert_one_line_exit_2(["replay", corpus_file, "--impl", release], capsys, "is a release build")
    assert_one_line_exit_2(
        ["replay", corpus_file, "--impl", release, "--mutant", "impl-early-free"], capsys, "Python port"
    )
    assert main(["replay", corpus_file, "--mutant", "x", "--no-mutant"]) == 2
    assert "not allowed with argument --mutant" in capsys.readouterr().err
    (tmp_path / "good.json").write_text((REPO_CORPUS / "debug" / "path-misuse.json").read_text())
    (tmp_path / "bad.json").write_text('{"corpus_version": 1, "name": "x"}')
    assert_one_line_exit_2(["replay", str(tmp_path)], capsys, "bad.json: missing field(s)")
