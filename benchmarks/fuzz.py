"""Campaign throughput with 1 and with 2 worker processes, in one run.

Each campaign searches the seed (no mutant) for `--seconds`, on a fresh directory database, and
its rate is total examples over the time since its first worker began searching (process start-up
is not counted). `cores_used` is its workers' CPU seconds per second of searching: how much of the
machine they got. The last line is `fuzz_scaling=<2-worker rate / 1-worker rate>` (target >= 1.7 on
a 2-core machine; a machine shared with other work scales less, and `cores_used` shows by how much).

With `--impl [PATH.so]` (no path: the C reference, debug build) the campaigns are `fuzz --impl`'s:
the lockstep against that library, each worker with its own child processes running it, whose CPU
`cores_used` does not count (it is the workers' own). The last line is then
`fuzz_impl_scaling=<2-worker rate / 1-worker rate>` (target >= 1.7).

    .venv/bin/python benchmarks/fuzz.py [--seconds S] [--checks model,lockstep] [--impl [PATH.so]]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from externref_harness.campaign.campaign import Campaign, CampaignOptions
from externref_harness.native.build import build_reference


def campaign_rate(
    workers: int, seconds: float, checks: tuple[str, ...], scratch: Path, impl: Path | None = None
) -> tuple[float, float, float]:
    """(examples/s, steps/s, cores used) of one campaign, summed over its workers."""
    options = CampaignOptions(
        checks, workers, seconds, str(scratch / f"db-{workers}"), scratch / f"failures-{workers}", seed=1,
        impl=impl,
    )  # fmt: skip
    campaign = Campaign(options)
    campaign.start()
    try:
        while campaign.running:
            campaign.poll(0.5)
    finally:
        campaign.stop()
    if campaign.fatal is not None or campaign.failures:
        raise SystemExit(f"the campaign did not run cleanly: {campaign.fatal or 'it found failures'}")
    _, _, examples_rate, steps_rate = campaign.totals()
    began = min(w.ready_at for w in campaign.workers if w.ready_at is not None)
    ended = max(w.last_at for w in campaign.workers if w.last_at is not None)
    return examples_rate, steps_rate, sum(w.cpu for w in campaign.workers) / (ended - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each campaign")
    parser.add_argument("--checks", default=None, help="comma-separated checks to search (default model)")
    parser.add_argument(
        "--impl", nargs="?", const="", default=None, metavar="PATH.so",
        help="campaigns against this library (no path: the C reference, debug build)",
    )  # fmt: skip
    args = parser.parse_args()
    impl = None
    if args.impl is not None:
        impl = Path(args.impl) if args.impl else build_reference("debug")
    checks = tuple((args.checks or ("lockstep" if impl is not None else "model")).split(","))
    rates = {}
    with tempfile.TemporaryDirectory() as scratch:
        for workers in (1, 2):
            examples_rate, steps_rate, cores = campaign_rate(
                workers, args.seconds, checks, Path(scratch), impl
            )
            rates[workers] = examples_rate
            print(
                f"workers={workers} examples_per_s={examples_rate:.1f} steps_per_s={steps_rate:.0f}"
                f" cores_used={cores:.2f}"
            )
    name = "fuzz_scaling" if impl is None else "fuzz_impl_scaling"
    print(f"{name}={rates[2] / rates[1]:.2f}")


if __name__ == "__main__":
    main()
