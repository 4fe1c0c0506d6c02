"""Summaries, targets, the printed table, the JSON file, the SVG plot and the docs table."""

from __future__ import annotations

import html
import math
import os
import platform
import statistics
from dataclasses import dataclass
from typing import Any

__all__ = [
    "PIPE_RATIOS",
    "ROWS",
    "Check",
    "checks",
    "machine",
    "markdown_table",
    "summarize",
    "svg",
    "table",
]


def summarize(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """min / median / max of every metric over the runs."""
    keys = [k for k in runs[0] if all(k in run for run in runs)] if runs else []
    return {
        k: {
            "min": min(run[k] for run in runs),
            "median": statistics.median(run[k] for run in runs),
            "max": max(run[k] for run in runs),
        }
        for k in keys
    }


def machine() -> dict[str, Any]:
    """What these numbers were measured on."""
    from google.protobuf import __version__ as protobuf_version
    from google.protobuf.internal import api_implementation

    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/loadavg") as f:
            load = " ".join(f.read().split()[:3])
    except OSError:
        load = "unknown"
    return {
        "cpu": model,
        "nproc": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "protobuf": protobuf_version,
        "protobuf_backend": api_implementation.Type(),
        "kernel": platform.release(),
        "loadavg_at_start": load,
    }


# What the table shows per workload: (metric, label, format).
ROWS: dict[str, list[tuple[str, str, str]]] = {
    "W1": [
        ("trades_per_s", "trades/s", "{:,.0f}"),
        ("elapsed_s", "elapsed s", "{:.3f}"),
        ("sender_printed_s", "sender printed all, s", "{:.3f}"),
        ("sender_cpu_us", "sender CPU us/trade", "{:.1f}"),
        ("receiver_cpu_us", "receiver CPU us/trade", "{:.1f}"),
    ],
    "W1N": [
        ("trades_per_s", "trades/s", "{:,.0f}"),
        ("pipe_ratio", "x batched pipe (same round)", "{:.3f}"),
        ("cpu_ratio", "x pipe by CPU (same round)", "{:.3f}"),
        ("elapsed_s", "elapsed s", "{:.3f}"),
        ("sender_cpu_us", "sender CPU us/trade", "{:.1f}"),
        ("receiver_cpu_us", "receiver CPU us/trade", "{:.1f}"),
    ],
    "W2": [
        ("p50_ms", "p50 ms", "{:.3f}"),
        ("p99_ms", "p99 ms", "{:.3f}"),
        ("p999_ms", "p99.9 ms", "{:.3f}"),
        ("max_ms", "max ms", "{:.3f}"),
        ("pipe_p99_ms", "bare pipe's p99 ms (same round)", "{:.3f}"),
        ("sender_row_p50_ms", "sender's own row p50 ms", "{:.3f}"),
        ("sender_row_p99_ms", "sender's own row p99 ms", "{:.3f}"),
        ("sender_cpu_us", "sender CPU us/trade", "{:.0f}"),
        ("receiver_cpu_us", "receiver CPU us/trade", "{:.0f}"),
    ],
    "W3": [
        ("join_s", "join s", "{:.3f}"),
        ("spawn_to_dial_s", "of which spawn to dial, s", "{:.3f}"),
        ("first_row_s", "spawn to first row, s", "{:.3f}"),
        ("joiner_cpu_s", "joiner CPU s (from spawn)", "{:.3f}"),
        ("holder_cpu_s", "holder CPU s (during join)", "{:.3f}"),
        ("load_from_store_s", "holder's load from store, s", "{:.3f}"),
    ],
    "W4": [
        ("hub_cpu_pct", "hub % of a core", "{:.3f}"),
        ("peer_cpu_pct_max", "peers' % (max)", "{:.3f}"),
    ],
    "W5": [
        row
        for n in (4, 8, 16)
        for row in [
            (f"n{n}_trades_per_s", f"{n} nodes: trades/s (burst)", "{:,.0f}"),
            (f"n{n}_burst_cpu_us_per_trade", f"{n} nodes: CPU us/trade (burst)", "{:,.0f}"),
            (f"n{n}_p50_ms", f"{n} nodes: p50 ms (paced)", "{:.2f}"),
            (f"n{n}_p99_ms", f"{n} nodes: p99 ms (paced)", "{:.2f}"),
            (f"n{n}_paced_cpu_us_per_trade", f"{n} nodes: CPU us/trade (paced)", "{:,.0f}"),
            (f"n{n}_idle_cpu_pct_max", f"{n} nodes: idle % of a core (max)", "{:.3f}"),
        ]
    ],
    "W6": [
        ("mib_per_100k", "MiB per 100k", "{:.1f}"),
        ("loaded_mib_per_100k", "loaded from store, MiB/100k", "{:.1f}"),
        ("joined_mib_per_100k", "received by joining, MiB/100k", "{:.1f}"),
        ("empty_rss_mib", "empty node RSS MiB", "{:.1f}"),
    ],
}


ROWS["W1N200K"] = ROWS["W1N"]
ROWS["W1"] = [*ROWS["W1"][:1], *ROWS["W1N"][1:3], *ROWS["W1"][1:]]
# Workloads whose every run is also divided by the batched pipe of its own round.
PIPE_RATIOS = ("W1", "W1N", "W1N200K")


@dataclass(frozen=True)
class Check:
    """A target: the measured median, the goal, and how far from it (>1: met)."""

    key: str
    label: str
    value: float
    goal: float
    headroom: float  # >= 1 when met (goal/value for "below", value/goal for "above")
    text: str

    @property
    def met(self) -> bool:
        return self.headroom >= 1.0


def checks(results: dict[str, Any]) -> list[Check]:
    """Each target of the issue against the median of this run's numbers."""
    w = results["workloads"]
    base = results["baseline"]["summary"]
    out = []

    def median(key: str, metric: str) -> float | None:
        entry = w.get(key)
        if not entry or entry.get("error") or metric not in entry["summary"]:
            return None
        return float(entry["summary"][metric]["median"])

    pipe = base.get("batched", {}).get("msgs_per_s", {}).get("median")
    value = median("W1", "trades_per_s")
    if value is not None and pipe:
        ratio = value / pipe
        out.append(
            Check(
                "W1",
                "W1 throughput / batched pipe",
                ratio,
                0.5,
                ratio / 0.5,
                f"{value:,.0f} trades/s = {ratio:.3f} x pipe ({pipe:,.0f}/s); target >= 0.5 x",
            )
        )
    for key in ("W1N", "W1N200K"):
        ratio = median(key, "pipe_ratio")
        if ratio is not None:
            rate = median(key, "trades_per_s") or 0.0
            out.append(
                Check(
                    key,
                    f"{key} (no coalescing) / batched pipe",
                    ratio,
                    0.35,
                    ratio / 0.35,
                    f"{rate:,.0f} trades/s, median ratio {ratio:.3f} x the pipe of the same round;"
                    " target >= 0.35 x",
                )
            )
    sizes = results["settings"].get("w5_sizes") or [16]
    largest = max(sizes)
    idle = median("W5", f"n{largest}_idle_cpu_pct_max")
    if idle is not None:
        out.append(
            Check(
                "W5",
                f"W5 idle, {largest}-node mesh",
                idle,
                1.0,
                1.0 / idle if idle > 0 else math.inf,
                f"{idle:.3g} % of a core on the busiest node; target < 1 %",
            )
        )
    joined = results["settings"].get("w3_positions", 100_000)
    w2 = w.get("W2")
    if w2 and not w2.get("error") and w2["runs"]:
        quiet = [run["p99_ms"] for run in w2["runs"] if run.get("pipe_p99_ms", 1e9) < 0.6]
        if quiet:
            worst = max(quiet)
            out.append(
                Check(
                    "W2",
                    "W2 p99, every quiet run",
                    worst,
                    1.0,
                    1.0 / worst if worst > 0 else math.inf,
                    f"worst {worst:.3g} ms over the {len(quiet)} of {len(w2['runs'])} runs whose"
                    " bare-pipe p99 was < 0.6 ms; target < 1 ms",
                )
            )
    for key, metric, label, goal, unit in [
        ("W2", "p99_ms", "W2 latency p99", 1.0, "ms"),
        ("W3", "join_s", f"W3 join of {joined:,} positions", 2.0, "s"),
        ("W4", "hub_cpu_pct", "W4 idle CPU", 0.5, "% of a core"),
        ("W6", "mib_per_100k", "W6 RSS per 100k", 50.0, "MiB"),
    ]:
        value = median(key, metric)
        if value is not None:
            headroom = goal / value if value > 0 else math.inf
            out.append(
                Check(
                    key,
                    label,
                    value,
                    goal,
                    headroom,
                    f"{value:.3g} {unit}; target < {goal:g} {unit}",
                )
            )
    return out


def _runs(results: dict[str, Any]) -> str:
    """How many runs each workload had: ``3`` or ``3 (W2: 5)``."""
    settings = results["settings"]
    runs, w2 = settings["runs"], settings.get("w2_runs", settings["runs"])
    return f"{runs}" if w2 == runs or "W2" not in results["workloads"] else f"{runs} (W2: {w2})"


def _fmt(fmt: str, value: float) -> str:
    return fmt.format(value)


def table(results: dict[str, Any]) -> str:
    """The plain-text table printed at the end of ``make bench``."""
    lines = []
    m = results["machine"]
    runs = _runs(results)
    lines.append(
        f"Position Distributor benchmarks: {runs} run(s) each, min / median / max"
        f" ({m['cpu']}, {m['nproc']} cores, Python {m['python']},"
        f" protobuf {m['protobuf']} {m['protobuf_backend']})"
    )
    lines.append("")
    base = results["baseline"]["summary"]
    lines.append("Baseline, the bare pipe (same run):")
    for mode, label in (("each", "one sendall per message"), ("batched", "batched ~64 KiB writes")):
        s = base.get(mode, {}).get("msgs_per_s")
        if s:
            cpu = base[mode]
            lines.append(
                f"  {label:<28} {s['min']:>10,.0f} {s['median']:>10,.0f} {s['max']:>10,.0f} msgs/s"
                f"  (CPU per message: sender {cpu['sender_cpu_us']['median']:.1f} us,"
                f" receiver {cpu['receiver_cpu_us']['median']:.1f} us)"
            )
    lat = base.get("latency")
    if lat:
        lines.append(
            f"  {'latency (W2 method)':<28} p50 {lat['p50_ms']['median']:.3f} ms,"
            f" p99 {lat['p99_ms']['median']:.3f} ms, max {lat['max_ms']['median']:.3f} ms"
            " (medians)"
        )
    lines.append("")
    header = f"{'workload':<30}{'metric':<30}{'min':>12}{'median':>12}{'max':>12}"
    lines.append(header)
    lines.append("-" * len(header))
    for key, entry in results["workloads"].items():
        title = f"{key} {entry['title']}"
        if entry.get("error"):
            lines.append(f"{title:<30}FAILED: {entry['error'].splitlines()[0]}")
            continue
        summary = entry["summary"]
        for i, (metric, label, fmt) in enumerate(ROWS.get(key, [])):
            if metric not in summary:
                continue
            s = summary[metric]
            lines.append(
                f"{title if i == 0 else '':<30}{label:<30}"
                f"{_fmt(fmt, s['min']):>12}{_fmt(fmt, s['median']):>12}{_fmt(fmt, s['max']):>12}"
            )
    lines.append("")
    lines.append("Targets (medians):")
    for check in checks(results):
        lines.append(f"  {'MET    ' if check.met else 'NOT MET'} {check.label:<30} {check.text}")
    note = _quiet_note(results)
    if note:
        lines.append(f"  ({note})")
    cpu_ratio = _cpu_ratio(results)
    if cpu_ratio is not None:
        lines.append(
            f"  (W1 by CPU per message, less sensitive to a busy machine: the node's busier"
            f" process spends {1 / cpu_ratio:.1f}x the CPU per trade of the batched pipe's"
            f" busier side, a ratio of {cpu_ratio:.3f})"
        )
    return "\n".join(lines)


def _quiet_note(results: dict[str, Any]) -> str | None:
    """Why the W2 quiet-run check is missing, when no run had a quiet machine."""
    w2 = results["workloads"].get("W2")
    if not w2 or w2.get("error") or not w2["runs"]:
        return None
    if any(run.get("pipe_p99_ms", 1e9) < 0.6 for run in w2["runs"]):
        return None
    worst = min(run.get("pipe_p99_ms", math.inf) for run in w2["runs"])
    return (
        f"W2's quiet-run check judged nothing: no run's bare-pipe p99 was under 0.6 ms"
        f" (the lowest was {worst:.3g} ms; the machine was busy)"
    )


def _cpu_ratio(results: dict[str, Any]) -> float | None:
    """W1's CPU-bound rate over the batched pipe's: throughput if each process had a core."""
    w1 = results["workloads"].get("W1", {}).get("summary", {}).get("cpu_bound_per_s")
    pipe = results["baseline"]["summary"].get("batched", {}).get("cpu_bound_per_s")
    if not w1 or not pipe:
        return None
    return float(w1["median"]) / float(pipe["median"])


def markdown_table(results: dict[str, Any]) -> str:
    """The results table of ``docs/performance.md`` (regenerated by ``make bench``)."""
    m = results["machine"]
    out = [
        f"Measured {results['started']} on {m['cpu']}, {m['nproc']} cores, Python {m['python']},"
        f" protobuf {m['protobuf']} ({m['protobuf_backend']} backend); load average at start"
        f" {m['loadavg_at_start']}; {_runs(results)} runs each;"
        f" `make bench` took {results['duration_s']:.0f} s.",
        "",
        "| baseline: bare pipe | min | median | max |",
        "|---|---:|---:|---:|",
    ]
    base = results["baseline"]["summary"]
    for mode, label in (("each", "one `sendall` per message"), ("batched", "batched ~64 KiB")):
        for metric, unit, fmt in (
            ("msgs_per_s", "msgs/s", "{:,.0f}"),
            ("sender_cpu_us", "sender CPU us/msg", "{:.2f}"),
            ("receiver_cpu_us", "receiver CPU us/msg", "{:.2f}"),
        ):
            s = base.get(mode, {}).get(metric)
            if s:
                out.append(
                    f"| {label}, {unit} | {_fmt(fmt, s['min'])} | {_fmt(fmt, s['median'])}"
                    f" | {_fmt(fmt, s['max'])} |"
                )
    lat = base.get("latency", {})
    for metric in ("p50_ms", "p99_ms", "max_ms"):
        s = lat.get(metric)
        if s:
            out.append(
                f"| latency, W2's method, {metric.replace('_ms', '')} ms |"
                f" {s['min']:.3f} | {s['median']:.3f} | {s['max']:.3f} |"
            )
    out += ["", "| workload | metric | min | median | max |", "|---|---|---:|---:|---:|"]
    for key, entry in results["workloads"].items():
        if entry.get("error"):
            out.append(f"| {key} {entry['title']} | FAILED | | | |")
            continue
        summary = entry["summary"]
        for i, (metric, label, fmt) in enumerate(ROWS.get(key, [])):
            if metric in summary:
                s = summary[metric]
                title = f"{key} {entry['title']}" if i == 0 else ""
                out.append(
                    f"| {title} | {label} | {_fmt(fmt, s['min'])} | {_fmt(fmt, s['median'])}"
                    f" | {_fmt(fmt, s['max'])} |"
                )
    out += ["", "| target | measured (median) | met |", "|---|---|---|"]
    for check in checks(results):
        out.append(f"| {check.label} | {check.text} | {'yes' if check.met else '**no**'} |")
    note = _quiet_note(results)
    if note:
        out.append(f"\n{note}.")
    cpu_ratio = _cpu_ratio(results)
    if cpu_ratio is not None:
        out.append(
            f"\nBy CPU per message (less sensitive to a busy machine): the node's busier process"
            f" spends {1 / cpu_ratio:.1f} times the CPU per trade of the batched pipe's busier"
            f" side, a ratio of {cpu_ratio:.3f} (the target asks for 0.5)."
        )
    return "\n".join(out) + "\n"


def svg(results: dict[str, Any]) -> str:
    """A bar per target: measured against the goal on a log scale (right of 1: met)."""
    items = checks(results)
    width, left, right = 1040, 230, 370
    bar_h, gap, top = 26, 18, 60
    height = top + len(items) * (bar_h + gap) + 50
    lo, hi = -2.0, 2.0  # log10 of headroom shown: 0.01x .. 100x

    def x(headroom: float) -> float:
        v = min(max(math.log10(headroom) if headroom > 0 else lo, lo), hi)
        return left + (v - lo) / (hi - lo) * (width - left - right)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
        f' viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13">',
        '<rect width="100%" height="100%" fill="white"/>',
        '<text x="10" y="22" font-size="15" font-weight="bold">Position Distributor:'
        " each target as headroom, how many times better than its goal"
        " (log scale; right of 1x: met)"
        "</text>",
        f'<text x="10" y="42" fill="#555">{html.escape(results["started"])},'
        f" {results['machine']['nproc']} cores, medians of {_runs(results)}"
        " run(s)</text>",
    ]
    for tick in (0.01, 0.1, 1, 10, 100):
        tx = x(tick)
        parts.append(
            f'<line x1="{tx:.1f}" y1="{top - 8}" x2="{tx:.1f}" y2="{height - 40}"'
            f' stroke="{"#333" if tick == 1 else "#ddd"}"'
            f' stroke-width="{2 if tick == 1 else 1}"/>'
        )
        parts.append(f'<text x="{tx:.1f}" y="{height - 22}" text-anchor="middle">{tick:g}x</text>')
    for i, check in enumerate(items):
        y = top + i * (bar_h + gap)
        x0, x1 = x(1.0), x(check.headroom)
        colour = "#2e7d32" if check.met else "#c62828"
        parts.append(
            f'<text x="{left - 8}" y="{y + bar_h * 0.7:.1f}" text-anchor="end">'
            f"{html.escape(check.label)}</text>"
        )
        parts.append(
            f'<rect x="{min(x0, x1):.1f}" y="{y}" width="{abs(x1 - x0):.1f}" height="{bar_h}"'
            f' fill="{colour}" opacity="0.8"/>'
        )
        parts.append(
            f'<text x="{max(x0, x1) + 6:.1f}" y="{y + bar_h * 0.7:.1f}"'
            f' font-size="11">{html.escape(check.text)}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
