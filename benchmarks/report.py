"""`python -m benchmarks.report` (what `make bench` runs): every benchmark, one after
another, then `BENCHMARKS.md` and its plots, generated from what they printed and
wrote.

Each benchmark runs as its own process; its output goes to the terminal as it
comes and, verbatim, into BENCHMARKS.md with the command and how long it took.
Every printed line that states a goal is gathered at the top. The plots (PNG, in
`benchmarks/plots/`) come from the JSON the HTTP and pipeline benchmarks write to
`benchmarks/results/`: throughput, latency and the Bastion/baseline ratio against
concurrency, and the blind-index lookup against table size.

A benchmark that fails is reported as failed in BENCHMARKS.md and makes the exit
status non-zero; the others still run. Each benchmark's outcome is also kept in
`benchmarks/results/<name>.outcome.json`; `--only NAME` (repeatable) runs just those
and writes the file from them plus the kept outcomes of the others, each section
saying when it ran.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.environment import PG_ADMIN_DSN, postgres_available

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
PLOTS = REPO / "benchmarks" / "plots"
OUTPUT = REPO / "BENCHMARKS.md"
HTTP_GOAL = 0.6
LOOKUP_GOAL = 1.5


@dataclass(frozen=True, slots=True)
class Benchmark:
    name: str
    title: str
    args: tuple[str, ...]


BENCHMARKS = (
    Benchmark(
        "http",
        "HTTP: Bastion against a minimal Starlette + SQLAlchemy app (goal >= 0.6x)",
        ("benchmarks.run", "--duration", "8", "--concurrency", "1,4,16,64"),
    ),
    Benchmark(
        "policy", "Policy decisions: compiled index vs Casbin enforce", ("benchmarks.policy",)
    ),
    Benchmark("crypto", "Field-encryption primitives", ("benchmarks.crypto",)),
    Benchmark("audit", "Audit log: chained vs unchained appends, verify", ("benchmarks.audit",)),
    Benchmark(
        "pipeline",
        "Encryption and audit inside a request; blind-index lookup vs table size",
        ("benchmarks.pipeline", "--large", "1000000"),
    ),
    Benchmark(
        "dsr",
        "Data subjects' requests: discovery vs region size; export and erasure",
        ("benchmarks.dsr", "--large", "1000000"),
    ),
    Benchmark(
        "rotation", "KEK rotation of 100k subject keys under reads", ("benchmarks.rotation",)
    ),
    Benchmark(
        "imports",
        "CSV import of 100k contacts (5% invalid, 10% duplicates) vs a plain bulk insert",
        ("benchmarks.imports", "--rows", "100000"),
    ),
    Benchmark(
        "console",
        "Console pages against the API calls they wrap (uvicorn, one client)",
        ("benchmarks.console",),
    ),
    Benchmark(
        "events",
        "Activity events ingested/s with workflow rules and lead scoring on vs automation off",
        ("benchmarks.events", "--events", "20000", "--leads", "1000", "--workers", "2"),
    ),
    Benchmark(
        "soak",
        "Concurrency: 48 clients, 2 uvicorn workers, 60 s, then every write accounted for",
        ("benchmarks.soak", "--clients", "48", "--duration", "60", "--workers", "2"),
    ),
)


@dataclass(frozen=True, slots=True)
class Outcome:
    benchmark: Benchmark
    output: str
    seconds: float
    returncode: int
    finished_at: str  # ISO 8601, UTC

    def save(self) -> None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        document = {
            "args": list(self.benchmark.args),
            "output": self.output,
            "seconds": round(self.seconds, 1),
            "returncode": self.returncode,
            "finished_at": self.finished_at,
        }
        (RESULTS / f"{self.benchmark.name}.outcome.json").write_text(json.dumps(document))

    @classmethod
    def kept(cls, benchmark: Benchmark) -> Outcome | None:
        """The outcome of this benchmark's last run, if it was the same command."""
        document = _json(f"{benchmark.name}.outcome.json")
        if not isinstance(document, dict) or document.get("args") != list(benchmark.args):
            return None
        return cls(
            benchmark,
            str(document["output"]),
            float(document["seconds"]),
            int(document["returncode"]),
            str(document["finished_at"]),
        )


def run(benchmark: Benchmark) -> Outcome:
    command = [sys.executable, "-m", *benchmark.args]
    print(f"\n=== {benchmark.name}: {' '.join(benchmark.args)} ===", flush=True)
    started = time.monotonic()
    lines: list[str] = []
    with subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line.rstrip("\n"))
        returncode = process.wait()
    outcome = Outcome(
        benchmark,
        "\n".join(lines),
        time.monotonic() - started,
        returncode,
        datetime.now(UTC).isoformat(timespec="seconds"),
    )
    outcome.save()
    return outcome


def machine() -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
                break
    except OSError:
        pass
    postgres = "not reachable"
    if postgres_available() is None:
        import psycopg

        with psycopg.connect(PG_ADMIN_DSN) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            postgres = str(row[0]) if row else "unknown"
    commit = _git("rev-parse", "--short", "HEAD")
    if _git("status", "--porcelain", "--untracked-files=no"):
        commit += " (with uncommitted changes)"
    return [
        f"- CPU: {cpu}, {os.cpu_count()} cores; memory {memory}",
        f"- OS: {platform.platform()}",
        f"- Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"PostgreSQL {postgres}",
        f"- Bastion commit: {commit}",
    ]


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip()


def goal_lines(outcomes: list[Outcome]) -> list[str]:
    lines = []
    for outcome in outcomes:
        for line in outcome.output.splitlines():
            if "goal" in line.lower():
                lines.append(f"- `{outcome.benchmark.name}`: `{line.strip()}`")
    return lines


def http_goal_lines() -> list[str]:
    document = _json("latest.json")
    if not isinstance(document, dict):
        return []
    lines = []
    for result in document.get("results", []):
        if result.get("concurrency") != 16:
            continue
        verdict = "met" if result["ratio"] >= HTTP_GOAL else "missed"
        lines.append(
            f"- `http`: {result['backend']} {result['operation']} at 16 clients: "
            f"{result['ratio']:.2f}x the baseline's throughput (goal >= {HTTP_GOAL}x: "
            f"{verdict})"
        )
    return lines


def _json(name: str) -> Any:
    try:
        return json.loads((RESULTS / name).read_text())
    except (OSError, ValueError):
        return None


def plots(ran: set[str]) -> list[tuple[str, str]]:
    """Draw from the JSON of the benchmarks that ran now (never a stale file);
    (caption, path relative to the repo)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    PLOTS.mkdir(parents=True, exist_ok=True)
    made: list[tuple[str, str]] = []
    document = _json("latest.json") if "http" in ran else None
    results = document.get("results", []) if isinstance(document, dict) else []
    backends = sorted({r["backend"] for r in results})
    operations = list(dict.fromkeys(r["operation"] for r in results))
    levels = sorted({r["concurrency"] for r in results})
    if results and len(levels) > 1:
        figures = {
            "http-throughput.png": ("requests/s (2xx)", "throughput vs concurrency"),
            "http-latency.png": ("latency ms (p50 solid, p99 dashed)", "latency vs concurrency"),
            "http-ratio.png": ("Bastion / baseline throughput", "ratio vs concurrency"),
        }
        for filename, (ylabel, caption) in figures.items():
            fig, axes = plt.subplots(
                len(backends),
                len(operations),
                figsize=(4 * len(operations), 3 * len(backends)),
                squeeze=False,
            )
            for row, backend in enumerate(backends):
                for col, operation in enumerate(operations):
                    axis = axes[row][col]
                    points = sorted(
                        (
                            r
                            for r in results
                            if r["backend"] == backend and r["operation"] == operation
                        ),
                        key=lambda r: r["concurrency"],
                    )
                    xs = [p["concurrency"] for p in points]
                    if filename == "http-ratio.png":
                        axis.plot(xs, [p["ratio"] for p in points], marker="o", label="ratio")
                        axis.axhline(HTTP_GOAL, color="grey", linestyle=":", label="goal 0.6")
                        axis.set_ylim(0, max(1.0, *(p["ratio"] for p in points)) * 1.1)
                    for app, colour in (("bastion", "tab:blue"), ("baseline", "tab:orange")):
                        if filename == "http-throughput.png":
                            axis.plot(
                                xs,
                                [p[app]["throughput_rps"] for p in points],
                                marker="o",
                                color=colour,
                                label=app,
                            )
                        elif filename == "http-latency.png":
                            axis.plot(
                                xs,
                                [p[app]["p50_ms"] for p in points],
                                marker="o",
                                color=colour,
                                label=f"{app} p50",
                            )
                            axis.plot(
                                xs,
                                [p[app]["p99_ms"] for p in points],
                                marker="x",
                                color=colour,
                                linestyle="--",
                                label=f"{app} p99",
                            )
                            axis.set_yscale("log")
                    axis.set_xscale("log", base=2)
                    axis.set_xticks(xs, [str(x) for x in xs])
                    axis.set_title(f"{backend}: {operation}", fontsize=10)
                    axis.set_xlabel("concurrent clients")
                    if col == 0:
                        axis.set_ylabel(ylabel)
                    axis.grid(alpha=0.3)
            axes[0][0].legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(PLOTS / filename, dpi=90)
            plt.close(fig)
            made.append((f"HTTP {caption}", f"benchmarks/plots/{filename}"))
    pipeline = _json("pipeline.json") if "pipeline" in ran else None
    if isinstance(pipeline, list) and pipeline:
        fig, axis = plt.subplots(figsize=(6, 3.5))
        for entry in pipeline:
            rows = [p["rows"] for p in entry["lookup"]]
            axis.plot(rows, [p["us"] for p in entry["lookup"]], marker="o", label=entry["backend"])
            axis.plot(
                rows,
                [entry["lookup"][0]["us"] * LOOKUP_GOAL] * len(rows),
                linestyle=":",
                color="grey",
            )
        axis.set_xscale("log")
        axis.set_xlabel("contacts in the region")
        axis.set_ylabel("email lookup, µs")
        axis.set_title("blind-index lookup vs table size (dotted: 1.5x the 10k figure)")
        axis.grid(alpha=0.3)
        axis.legend()
        fig.tight_layout()
        fig.savefig(PLOTS / "lookup-vs-rows.png", dpi=90)
        plt.close(fig)
        made.append(("Blind-index lookup vs table size", "benchmarks/plots/lookup-vs-rows.png"))
    return made


def write(outcomes: list[Outcome], started: datetime) -> None:
    total = sum(o.seconds for o in outcomes)
    ran = {o.benchmark.name for o in outcomes if o.returncode == 0}
    parts = [
        "# Bastion benchmarks",
        "",
        f"Generated by `make bench` (`python -m benchmarks.report`) on "
        f"{started:%Y-%m-%d %H:%M} UTC ({total / 60:.0f} minutes of benchmarks); do not edit "
        "by hand. "
        "What each benchmark measures, and against which baseline, is in "
        "[benchmarks/README.md](benchmarks/README.md). Ratios are against a baseline "
        "measured in the same run; absolute numbers move with the machine's load.",
        "",
        "## Machine",
        "",
        *machine(),
        "",
        "## Goals",
        "",
        "Every line a benchmark printed about a goal, and the HTTP ratios at 16 clients:",
        "",
        *(http_goal_lines() if "http" in ran else []),
        *goal_lines(outcomes),
        "",
    ]
    drawn = plots(ran)
    if drawn:
        parts += ["## Plots", ""]
        for caption, path in drawn:
            parts += [f"![{caption}]({path})", ""]
    for outcome in outcomes:
        state = "" if outcome.returncode == 0 else f" — FAILED (exit {outcome.returncode})"
        parts += [
            f"## {outcome.benchmark.title}{state}",
            "",
            f"`python -m {' '.join(outcome.benchmark.args)}` — {outcome.seconds:.0f} s, "
            f"finished {outcome.finished_at.replace('T', ' ').removesuffix('+00:00')} UTC",
            "",
            "```text",
            outcome.output.strip() or "(no output)",
            "```",
            "",
        ]
    OUTPUT.write_text("\n".join(parts))
    print(f"\nwrote {OUTPUT.relative_to(REPO)} and {len(drawn)} plots")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", action="append", choices=[b.name for b in BENCHMARKS], help="run just these"
    )
    args = parser.parse_args()
    started = datetime.now(UTC)
    outcomes = []
    for benchmark in BENCHMARKS:
        if not args.only or benchmark.name in args.only:
            outcomes.append(run(benchmark))
        elif (kept := Outcome.kept(benchmark)) is not None:
            outcomes.append(kept)
    write(outcomes, started)
    failed = [o.benchmark.name for o in outcomes if o.returncode != 0]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
