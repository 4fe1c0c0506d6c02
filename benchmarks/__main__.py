"""``python -m benchmarks`` (``make bench``): run the workloads beside the bare-pipe baseline.

    python -m benchmarks                 # everything, 3 runs each; updates the docs
    python -m benchmarks --quick         # 1 smaller run of each (a smoke test)
    python -m benchmarks --only W1,W2    # some workloads
    python -m benchmarks --runs 5
    python -m benchmarks --only W5 --transport mesh   # W1, W1N, W2, W5 over a transport
    python -m benchmarks --render benchmarks/results/latest.json   # docs from saved results

Runs go in rounds (baseline, then each workload once) so that the baseline is sampled over
the same stretch of time as the workloads on a shared, noisy machine. Results go to
``benchmarks/results/latest.json``; a full run (all workloads, not ``--quick``) also
regenerates ``docs/performance.svg`` and the results table in ``docs/performance.md``.
Exit status 1 if any run failed (a wrong final view, a deadline, a crash).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from . import natsbench, report
from .harness import ROOT, TRANSPORTS, BenchError
from .workloads import WORKLOADS, Settings, baseline_latency, baseline_pipe

assert natsbench.NatsTransport.name in TRANSPORTS  # importing it registers --transport nats

RESULTS = ROOT / "benchmarks" / "results" / "latest.json"
DOC = ROOT / "docs" / "performance.md"
PLOT = ROOT / "docs" / "performance.svg"
START, END = "<!-- bench:results:start -->", "<!-- bench:results:end -->"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="1 smaller run of each workload")
    parser.add_argument("--only", metavar="W1,W2", help="run only these workloads")
    parser.add_argument("--runs", type=int, help="runs per workload (default 3, quick 1)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where the JSON goes")
    parser.add_argument(
        "--transport",
        choices=sorted(TRANSPORTS),
        default="mesh",
        help="how the nodes of W1, W1N, W2 and W5 reach each other (default: mesh)",
    )
    docs = parser.add_mutually_exclusive_group()
    docs.add_argument(
        "--docs",
        action="store_true",
        default=None,
        help="update docs/performance.{md,svg} even for a partial run",
    )
    docs.add_argument("--no-docs", dest="docs", action="store_false", help="do not update the docs")
    parser.add_argument(
        "--render",
        metavar="JSON",
        type=Path,
        help="run nothing: print the table of a results file and regenerate the docs from it",
    )
    args = parser.parse_args(argv)
    if args.only:
        keys = [k.strip().upper() for k in args.only.split(",") if k.strip()]
        unknown = [k for k in keys if k not in WORKLOADS]
        if unknown:
            parser.error(
                f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}"
            )
        args.keys = keys
    else:
        args.keys = list(WORKLOADS)
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def _log(text: str) -> None:
    print(text, flush=True)


def _attempt(label: str, fn: Any, *args: Any) -> tuple[dict[str, float] | None, str | None]:
    t0 = time.perf_counter()
    try:
        metrics = fn(*args)
    except BenchError as exc:
        _log(f"  {label}: FAILED\n{exc}")
        return None, str(exc)
    except Exception as exc:
        _log(f"  {label}: FAILED with an unexpected error\n{traceback.format_exc()}")
        return None, repr(exc)
    shown = ", ".join(f"{k}={v:,.4g}" for k, v in metrics.items())
    _log(f"  {label} ({time.perf_counter() - t0:.1f}s): {shown}")
    return metrics, None


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.render is not None:
        saved = json.loads(args.render.read_text())
        _log(report.table(saved))
        if args.docs is not False:
            PLOT.write_text(report.svg(saved))
            _update_doc(report.markdown_table(saved))
            _log(
                f"updated {PLOT.relative_to(ROOT)} and the results table of {DOC.relative_to(ROOT)}"
            )
        return 0
    settings = Settings.quick() if args.quick else Settings()
    if args.runs is not None:
        settings = dataclasses.replace(settings, runs=args.runs, w2_runs=args.runs)
    settings = dataclasses.replace(settings, transport=args.transport)
    full = not args.quick and args.keys == list(WORKLOADS) and args.transport == "mesh"
    update_docs = full if args.docs is None else args.docs
    started = dt.datetime.now().astimezone()
    t_start = time.perf_counter()
    results: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "machine": report.machine(),
        "settings": {**dataclasses.asdict(settings), "quick": args.quick, "only": args.keys},
        "baseline": {"runs": {"each": [], "batched": [], "latency": []}, "errors": []},
        "workloads": {
            key: {"title": WORKLOADS[key].title, "target": WORKLOADS[key].target, "runs": []}
            for key in args.keys
        },
    }
    rounds = max(WORKLOADS[key].runs(settings) for key in args.keys)
    failed = False
    for rnd in range(rounds):
        _log(f"round {rnd + 1} of {rounds}")
        keys = [key for key in args.keys if rnd < WORKLOADS[key].runs(settings)]
        need_latency = any(k in keys for k in ("W2", "W5"))
        base = results["baseline"]
        modes = [("each", baseline_pipe, "each"), ("batched", baseline_pipe, "batched")]
        pipe: dict[str, float] | None = None  # this round's batched pipe
        for name, fn, mode in modes:
            metrics, error = _attempt(f"bare pipe, {name}", fn, settings, mode, rnd)
            if metrics is not None:
                base["runs"][name].append(metrics)
                if name == "batched":
                    pipe = metrics
            else:
                base["errors"].append(error)
                failed = True
        latency: dict[str, float] | None = None  # this round's bare-pipe latency
        for key in keys:
            entry = results["workloads"][key]
            if entry.get("error"):
                continue  # a workload that failed once is not run again
            if need_latency and key in ("W2", "W5"):
                # Right before W2 (or W5): its quiet-run check compares with this p99.
                need_latency = False
                metrics, error = _attempt("bare pipe, latency", baseline_latency, settings, rnd)
                if metrics is not None:
                    base["runs"]["latency"].append(metrics)
                    latency = metrics
                else:
                    base["errors"].append(error)
                    failed = True
            metrics, error = _attempt(f"{key} {entry['title']}", WORKLOADS[key].run, settings, rnd)
            if metrics is not None:
                if pipe is not None and key in report.PIPE_RATIOS:
                    # Against the pipe measured in the same round, minutes apart at most.
                    metrics["pipe_ratio"] = metrics["trades_per_s"] / pipe["msgs_per_s"]
                    metrics["cpu_ratio"] = metrics["cpu_bound_per_s"] / pipe["cpu_bound_per_s"]
                    _log(
                        f"    {key}: {metrics['pipe_ratio']:.3f} x this round's batched pipe"
                        f" ({pipe['msgs_per_s']:,.0f} msgs/s); by CPU {metrics['cpu_ratio']:.3f}"
                    )
                if key == "W2" and latency is not None:
                    # Was the machine quiet? The bare pipe's own p99, measured just before.
                    metrics["pipe_p99_ms"] = latency["p99_ms"]
                entry["runs"].append(metrics)
            else:
                entry["error"] = error
                failed = True
    results["baseline"]["summary"] = {
        name: report.summarize(runs) for name, runs in results["baseline"]["runs"].items() if runs
    }
    for entry in results["workloads"].values():
        entry["summary"] = report.summarize(entry["runs"]) if entry["runs"] else {}
    results["duration_s"] = time.perf_counter() - t_start
    results["checks"] = [{**dataclasses.asdict(c), "met": c.met} for c in report.checks(results)]
    results["failed"] = failed

    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(args.output)
    _log("")
    _log(report.table(results))
    _log("")
    shown = args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output
    _log(f"results: {shown}")
    if update_docs:
        PLOT.write_text(report.svg(results))
        _update_doc(report.markdown_table(results))
        _log(f"updated {PLOT.relative_to(ROOT)} and the results table of {DOC.relative_to(ROOT)}")
    _log(f"took {results['duration_s']:.0f} s")
    if failed:
        _log("\n*** BENCHMARK FAILED: see FAILED above (a wrong view, a deadline or a crash) ***")
        return 1
    return 0


def _update_doc(table: str) -> None:
    """Replace the text between the markers of docs/performance.md (append them if absent)."""
    text = DOC.read_text() if DOC.exists() else "# Performance\n"
    block = f"{START}\n{table}{END}"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
