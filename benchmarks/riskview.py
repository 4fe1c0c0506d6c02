"""The risk view's cost and speed: page latency, and W1/W2 with ``--http`` beside without.

    python -m benchmarks.riskview               # everything (about 3 minutes)
    python -m benchmarks.riskview --quick       # smaller (a smoke test)
    python -m benchmarks.riskview --no-browser  # the page latency through SSE only

1. **Page latency.** strategy_2 (the desk, ``--http``) dials strategy_1. One trade at a time is
   typed at strategy_1 (150 ms apart, more than the view's 100 ms hold-off, then 5 ms apart,
   where changes are coalesced); timed from the line written until (a) an SSE client of the desk's
   ``/events`` (the page's own stream, read by a thread of this process) has the change, and
   (b) a real page in the system's chromium shows the row: a ``MutationObserver`` in the page
   stamps the time (``Date.now()``) at the next animation frame after the row is written into
   the table; the trade's line is stamped with ``time.time()`` on the same machine. For the
   page, trades are 300 ms apart, more than the page's 250 ms between renders, so each is
   drawn on its own.
2. **Overhead.** W1 (20,000 trades typed at once) and W2 (one trade at a time) exactly as
   ``make bench`` runs them (``workloads.WORKLOADS``), both nodes with ``--http`` and one live
   stream open on strategy_1 (the node that takes the trades: every trade is a change its
   stream is offered), beside the same workload without ``--http``; the two modes alternate
   run by run so both see the same machine. The figure is CPU per trade (each node's
   ``/proc`` CPU time over the trades), with/without.

Results go to ``benchmarks/results/riskview.json`` and into docs/performance.md's risk view
section (between its markers).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import http.client
import json
import os
import platform
import shutil
import socket
import statistics
import sys
import threading
import time
from typing import Any

from . import workloads
from .harness import ROOT, BenchError, Cluster, NodeProc, free_port, source_commit

RESULTS = ROOT / "benchmarks" / "results" / "riskview.json"
DOC = ROOT / "docs" / "performance.md"
START, END = "<!-- riskview:results:start -->", "<!-- riskview:results:end -->"
CHROMIUM = os.environ.get("PD_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


class SseClient:
    """A thread reading a node's ``/events`` and keeping the latest net of each position,
    with the time (``perf_counter``) each change arrived."""

    def __init__(self, port: int, deadline: float = 30.0) -> None:
        self.port = port
        self.cond = threading.Condition()
        self.nets: dict[tuple[str, str], tuple[float, float]] = {}
        self.events = 0
        self.connected = threading.Event()
        self._conn: http.client.HTTPConnection | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, args=(deadline,), daemon=True)
        self._thread.start()
        if not self.connected.wait(deadline):
            raise BenchError(f"no risk view on port {port} within {deadline}s")

    def _run(self, deadline: float) -> None:
        end = time.monotonic() + deadline
        while not self._closed:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                conn.request("GET", "/events")
                response = conn.getresponse()
                break
            except OSError:
                if time.monotonic() > end:
                    return
                time.sleep(0.05)
        else:
            return
        self._conn = conn
        self.connected.set()
        name = ""
        try:
            while line := response.readline():
                if line.startswith(b"event: "):
                    name = line[7:].strip().decode()
                elif line.startswith(b"data: ") and name in ("snapshot", "changes"):
                    now = time.perf_counter()
                    data = json.loads(line[6:])
                    with self.cond:
                        for strategy, symbol, net, _ in data["positions"]:
                            self.nets[(strategy, symbol)] = (net, now)
                        self.events += 1
                        self.cond.notify_all()
        except (OSError, ValueError):
            pass  # closed

    def wait_for(self, key: tuple[str, str], net: float, timeout: float = 10.0) -> float:
        """When (perf_counter) the stream delivered ``key`` at ``net``."""
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                got = self.nets.get(key)
                if got is not None and got[0] == net:
                    return got[1]
                left = end - time.monotonic()
                if left <= 0:
                    raise BenchError(f"the stream never showed {key} = {net}")
                self.cond.wait(left)

    def close(self) -> None:
        self._closed = True
        if self._conn is not None and self._conn.sock is not None:
            with contextlib.suppress(OSError):
                self._conn.sock.shutdown(2)
        self._thread.join(5)


class Drain:
    """A live stream read and thrown away by a thread (for the overhead runs: the node does
    all its work for the stream, and the reader here costs next to nothing on the shared
    CPUs, as a browser on another machine would)."""

    def __init__(self, port: int, deadline: float = 30.0) -> None:
        end = time.monotonic() + deadline
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                if time.monotonic() > end:
                    raise BenchError(f"no risk view on port {port}") from None
                time.sleep(0.05)
        self.sock.sendall(b"GET /events HTTP/1.1\r\nHost: bench\r\n\r\n")
        self.received = 0
        first = self.sock.recv(65536)  # the headers, the status and the snapshot begin
        if not first.startswith(b"HTTP/1.1 200"):
            raise BenchError(f"the stream did not open: {first[:80]!r}")
        self.received += len(first)
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        self.sock.settimeout(None)
        with contextlib.suppress(OSError):
            while chunk := self.sock.recv(1 << 16):
                self.received += len(chunk)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)
        self.sock.close()


class HttpCluster(Cluster):
    """A harness Cluster whose nodes serve ``--http``; one live stream is kept open on
    ``stream_on`` while the workload runs."""

    stream_on = "strategy_1"

    def __init__(self, label: str) -> None:
        super().__init__(label)
        self.http_ports: dict[str, int] = {}
        self.streams: list[Drain] = []

    def node(self, name: str, peers: Any = (), **kwargs: Any) -> NodeProc:
        port = free_port()
        kwargs["args"] = [*kwargs.get("args", ()), "--http", f"127.0.0.1:{port}"]
        node = super().node(name, peers, **kwargs)
        self.http_ports[name] = port
        if name == self.stream_on:
            self.streams.append(Drain(port))
        return node

    def close(self) -> None:
        for stream in self.streams:
            stream.close()
        super().close()


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def q(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]

    return {
        "samples": len(ordered),
        "p50_ms": q(0.5) * 1e3,
        "p90_ms": q(0.9) * 1e3,
        "p99_ms": q(0.99) * 1e3,
        "max_ms": ordered[-1] * 1e3,
    }


# Installed in the page before its own script: stamps the time each positions row is written,
# at the next animation frame (when the browser can paint it).
_OBSERVER = """
window.__marks = [];
document.addEventListener('DOMContentLoaded', () => {
  const body = document.querySelector('#positions tbody');
  new MutationObserver((mutations) => {
    const rows = new Set();
    for (const m of mutations) {
      const node = m.target.nodeType === 1 ? m.target : m.target.parentElement;
      for (const added of m.addedNodes) {
        if (added.nodeType === 1 && added.dataset.key) rows.add(added);
      }
      const tr = node && node.closest ? node.closest('tr') : null;
      if (tr && tr.dataset.key) rows.add(tr);
    }
    const seen = [...rows].map((tr) => [tr.dataset.key, tr.cells[2].textContent]);
    requestAnimationFrame(() => {
      const t = Date.now();
      for (const s of seen) window.__marks.push([...s, t]);
    });
  }).observe(body, {childList: true, subtree: true, characterData: true});
});
"""


def page_latency(samples: int, browser_samples: int, use_browser: bool) -> dict[str, Any]:
    """Trade typed at strategy_1 -> the desk's stream has it, and -> a page shows it."""
    out: dict[str, Any] = {}
    with Cluster("riskview-latency") as c:
        trader = c.node("strategy_1")
        http_port = free_port()
        desk = c.node("strategy_2", [trader], args=["--http", f"127.0.0.1:{http_port}"])
        workloads._warm_up([trader, desk], {"strategy_1": ["strategy_2"], "strategy_2": []})
        stream = SseClient(http_port)
        try:
            for name, gap, prefix in (("sse", 0.15, "LAT"), ("sse_busy", 0.005, "BUSY")):
                latencies = []
                for i in range(samples):
                    key = ("strategy_1", f"{prefix}{i % 50:02d}")
                    net = float(i // 50 + 1)
                    t0 = time.perf_counter()
                    trader.write(f"{key[1]} 1\n".encode())
                    latencies.append(stream.wait_for(key, net) - t0)
                    time.sleep(gap)
                out[name] = _percentiles(latencies)
                print(f"  SSE stream, {gap * 1e3:g} ms apart: {_show(out[name])}", flush=True)
            if use_browser:
                out["page"] = _browser_latency(trader, stream, http_port, browser_samples)
                print(f"  page (chromium): {_show(out['page'])}", flush=True)
        finally:
            stream.close()
    return out


def _browser_latency(
    trader: NodeProc, stream: SseClient, http_port: int, samples: int
) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900}, bypass_csp=True)
            page.add_init_script(_OBSERVER)
            page.goto(f"http://127.0.0.1:{http_port}/")
            page.wait_for_function("document.body.dataset.loaded === '1'", timeout=60_000)
            typed: dict[str, float] = {}
            for i in range(samples):
                symbol = f"PAGE{i:04d}"
                typed[f"strategy_1|{symbol}"] = time.time()
                trader.write(f"{symbol} 1\n".encode())
                stream.wait_for(("strategy_1", symbol), 1.0)
                time.sleep(0.3)
            time.sleep(0.5)
            marks = page.evaluate("window.__marks")
        finally:
            browser.close()
    first: dict[str, float] = {}
    for key, _, stamp in marks:
        if key in typed and key not in first:
            first[key] = stamp / 1e3
    missing = set(typed) - set(first)
    if missing:
        raise BenchError(f"the page never showed {sorted(missing)[:5]}")
    return _percentiles([first[key] - typed[key] for key in typed])


def _show(stats: dict[str, float]) -> str:
    return (
        f"p50 {stats['p50_ms']:.1f} ms, p90 {stats['p90_ms']:.1f} ms,"
        f" p99 {stats['p99_ms']:.1f} ms, max {stats['max_ms']:.1f} ms ({stats['samples']:.0f})"
    )


def overhead(runs: int, quick: bool) -> dict[str, Any]:
    """W1 and W2 with --http and a live stream, beside without, alternating run by run."""
    settings = workloads.Settings.quick() if quick else workloads.Settings()
    settings = dataclasses.replace(settings, w2_samples=300 if quick else 600)
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    for key in ("W1", "W2"):
        per_mode: dict[str, list[dict[str, float]]] = {"without": [], "with": []}
        for rnd in range(runs):
            # Alternate which goes first, so a drift of the machine's load favours neither.
            for mode in ("without", "with") if rnd % 2 == 0 else ("with", "without"):
                cls = HttpCluster if mode == "with" else Cluster
                with workloads.patched_cluster(cls):
                    metrics = workloads.WORKLOADS[key].run(settings, rnd)
                per_mode[mode].append(metrics)
                cpu = metrics["sender_cpu_us"] + metrics["receiver_cpu_us"]
                extra = (
                    f"{metrics['trades_per_s']:,.0f} trades/s"
                    if key == "W1"
                    else f"p99 {metrics['p99_ms']:.2f} ms"
                )
                print(
                    f"  {key} {mode:7} run {rnd + 1}: CPU/trade {cpu:.1f} us"
                    f" (sender {metrics['sender_cpu_us']:.1f}, receiver"
                    f" {metrics['receiver_cpu_us']:.1f}), {extra}",
                    flush=True,
                )
        results[key] = per_mode
    summary: dict[str, Any] = {}
    for key, per_mode in results.items():
        row: dict[str, Any] = {}
        for mode, runs_ in per_mode.items():
            row[mode] = {
                name: statistics.median(r[name] for r in runs_)
                for name in runs_[0]
                if isinstance(runs_[0][name], int | float)
            }
            row[mode]["cpu_us"] = statistics.median(
                r["sender_cpu_us"] + r["receiver_cpu_us"] for r in runs_
            )
        # The ratio of each pair of runs taken side by side, then their median.
        ratios = [
            (w["sender_cpu_us"] + w["receiver_cpu_us"])
            / (wo["sender_cpu_us"] + wo["receiver_cpu_us"])
            for w, wo in zip(per_mode["with"], per_mode["without"], strict=True)
        ]
        sender = [
            w["sender_cpu_us"] / wo["sender_cpu_us"]
            for w, wo in zip(per_mode["with"], per_mode["without"], strict=True)
        ]
        row["cpu_ratio_runs"] = ratios
        row["cpu_ratio"] = statistics.median(ratios)
        row["sender_cpu_ratio"] = statistics.median(sender)
        row["runs"] = {m: r for m, r in per_mode.items()}
        summary[key] = row
    return summary


def render(result: dict[str, Any]) -> str:
    """The docs block for docs/performance.md."""
    lat = result["latency"]
    lines = [
        f"Measured {result['date']} at commit `{result['commit']}`, load average"
        f" {result['load']} on {result['cpus']} CPUs (the machine is shared: compare the"
        " ratios, taken from runs side by side).",
        "",
        "| From a trade typed at a peer until | p50 | p90 | p99 | max | samples |",
        "|---|---|---|---|---|---|",
    ]
    names = {
        "sse": "the desk's live stream (`/events`) has it (trades 150 ms apart)",
        "sse_busy": "the same, trades 5 ms apart (changes coalesced, 100 ms at most)",
        "page": "a page in chromium shows it (trades 300 ms apart)",
    }
    for key in ("sse", "sse_busy", "page"):
        if key in lat:
            s = lat[key]
            lines.append(
                f"| {names[key]} | {s['p50_ms']:.1f} ms | {s['p90_ms']:.1f} ms |"
                f" {s['p99_ms']:.1f} ms | {s['max_ms']:.1f} ms | {s['samples']:.0f} |"
            )
    lines += [
        "",
        "| Workload | CPU per trade without `--http` | with `--http` and a live stream | ratio"
        " (median of pairs) | the trading node alone | throughput or p99, without / with |",
        "|---|---|---|---|---|---|",
    ]
    for key in ("W1", "W2"):
        row = result["overhead"][key]
        if key == "W1":
            speed = (
                f"{row['without']['trades_per_s']:,.0f} / {row['with']['trades_per_s']:,.0f}"
                " trades/s"
            )
        else:
            speed = f"{row['without']['p99_ms']:.2f} / {row['with']['p99_ms']:.2f} ms p99"
        lines.append(
            f"| {key} | {row['without']['cpu_us']:.1f} µs | {row['with']['cpu_us']:.1f} µs |"
            f" {row['cpu_ratio']:.3f} ({', '.join(f'{r:.3f}' for r in row['cpu_ratio_runs'])})"
            f" | {row['sender_cpu_ratio']:.3f} | {speed} |"
        )
    lines += [
        "",
        "CPU per trade is both nodes' CPU time over the trades (`/proc/<pid>/task/*/schedstat`);"
        ' "with" runs both nodes with `--http` and keeps one live stream open on the node'
        " that takes the trades. Target: less than 10 % more CPU per trade (a ratio < 1.10).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.riskview", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer samples and runs")
    parser.add_argument("--runs", type=int, default=None, help="runs of W1 and W2 per mode")
    parser.add_argument("--no-browser", action="store_true", help="no chromium page latency")
    parser.add_argument("--no-docs", action="store_true", help="do not update the docs")
    args = parser.parse_args(argv)
    use_browser = not args.no_browser and os.path.exists(CHROMIUM)
    if not use_browser and not args.no_browser:
        print(f"no chromium at {CHROMIUM}: the page latency is measured through SSE only")
    runs = args.runs or (1 if args.quick else 5)
    print("risk view: page latency", flush=True)
    latency = page_latency(100 if args.quick else 300, 30 if args.quick else 100, use_browser)
    print("risk view: W1 and W2 with --http and a live stream, beside without", flush=True)
    over = overhead(runs, args.quick)
    result = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": source_commit(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "quick": args.quick,
        "latency": latency,
        "overhead": over,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    block = render(result)
    print(block)
    if not args.no_docs and not args.quick:
        text = DOC.read_text()
        if START in text and END in text:
            head, rest = text.split(START, 1)
            _, tail = rest.split(END, 1)
            DOC.write_text(f"{head}{START}\n{block}\n{END}{tail}")
            print(f"updated {DOC.relative_to(ROOT)}")
    ok = all(over[key]["cpu_ratio"] < 1.10 for key in ("W1", "W2"))
    if not ok:
        print("TARGET MISSED: --http costs 10 % or more CPU per trade", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
