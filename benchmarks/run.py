"""Every XRayViewer benchmark in one run: one table (median, min–max, repeats, goal, pass/fail) and one JSON file.

    python benchmarks/run.py [--quick] [--json OUT] [--only NAME ...]

Each benchmark runs in its own fresh Python process (so TensorFlow state, caches and memory of one cannot flatter the
next) and writes its figures as JSON; this script collects them, adds the machine they came from and prints the table.
A benchmark that fails or whose piece is not built yet becomes a row that says so; the run goes on.

The machine is shared and noisy (2 cores): compare ratios (Grad-CAM vs bare forward, cached vs classic training)
rather than absolute times across machines, and read min–max before trusting a median.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent

# name -> (script, extra argv, timeout in s for full / quick)
BENCHMARKS: dict[str, tuple[str, list[str], tuple[int, int]]] = {
    "cold_start": ("bench_app.py", ["cold-start"], (900, 300)),
    "inference": ("bench_inference.py", [], (1800, 600)),
    "next_image": ("bench_app.py", ["next-image"], (900, 300)),
    "folder_open": ("bench_app.py", ["folder-open"], (900, 300)),
    "training": ("bench_training.py", [], (3600, 900)),
    "memory": ("bench_app.py", ["memory"], (2400, 600)),
    "gui_block": ("bench_app.py", ["gui-block"], (900, 300)),
}


def machine_info() -> dict:
    """What the figures came from. Versions are read from package metadata: no TensorFlow import here."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "os": f"{platform.system()} {platform.release()}"}
    try:
        import psutil

        info["ram_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
        info["load_avg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except (ImportError, OSError):
        pass
    for package in ("tensorflow", "keras", "numpy", "PySide6-Essentials", "opencv-python-headless", "tf-keras-vis"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = None
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_DIR, text=True,
                                            capture_output=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


# --- figures ------------------------------------------------------------------------------------------------------


def make_figure(name: str, samples: list[float], unit: str, *, goal: str | None = None,
                passed: bool | None = None, note: str = "") -> dict:
    """One row of the table. `samples` are the repeats; `goal` is shown as text ("<= 50 ms")."""
    samples = [float(s) for s in samples if s is not None]
    row = {"name": name, "unit": (unit or "").strip(), "samples": samples, "repeats": len(samples), "goal": goal,
           "passed": passed, "note": note}
    if samples:
        ordered = sorted(samples)
        mid = len(ordered) // 2
        row["median"] = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
        row["min"], row["max"] = ordered[0], ordered[-1]
    return row


def check_goal(value: float | None, op: str, target: float) -> bool | None:
    if value is None:
        return None
    return value <= target if op == "<=" else value >= target


def _from_external(data: dict, fallback_name: str) -> list[dict]:
    """Normalise the JSON of bench_inference.py / bench_training.py into rows.

    Accepted shapes: {"figures": [rows as make_figure makes them]} (preferred), or a flat dict of name -> number /
    list of numbers / {"median":..., "samples": [...]} (each becomes a row without a goal; goals are added below).
    """
    if isinstance(data.get("figures"), list):
        rows = []
        for fig in data["figures"]:
            if "samples" not in fig and "median" in fig:
                fig = {**fig, "samples": [fig["median"]]}
            rows.append(make_figure(fig.get("name", fallback_name), fig.get("samples", []), fig.get("unit", ""),
                                    goal=fig.get("goal"), passed=fig.get("passed"), note=fig.get("note", "")))
            for key in ("median", "min", "max"):  # keep their own summary when they give one
                if key in fig and fig[key] is not None:
                    rows[-1][key] = float(fig[key])
            if "repeats" in fig:
                rows[-1]["repeats"] = fig["repeats"]
        return rows
    rows = []
    for key, value in data.items():
        if isinstance(value, bool) or key in ("machine", "config", "meta"):
            continue
        if isinstance(value, (int, float)):
            rows.append(make_figure(key, [value], ""))
        elif isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
            rows.append(make_figure(key, value, ""))
        elif isinstance(value, dict) and ("median" in value or "samples" in value):
            rows.extend(_from_external({"figures": [{"name": key, **value}]}, key))
    return rows


def run_benchmark(name: str, quick: bool, workdir: Path, log, log_dir: Path | None = None) -> dict:
    script, argv, (timeout_full, timeout_quick) = BENCHMARKS[name]
    path = BENCH_DIR / script
    out = workdir / f"{name}.json"
    result = {"name": name, "script": script, "figures": [], "error": None, "seconds": None}
    if not path.is_file():
        result["error"] = f"{script} is not in the repository yet"
        return result
    cmd = [sys.executable, str(path), *argv, "--json", str(out)] + (["--quick"] if quick else [])
    env = {**os.environ, "QT_QPA_PLATFORM": os.environ.get("QT_QPA_PLATFORM", "offscreen"),
           "TF_CPP_MIN_LOG_LEVEL": "2", "MPLBACKEND": "Agg", "PYTHONPATH": str(REPO_DIR)}
    log(f"[{name}] {' '.join(cmd[1:])}")
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO_DIR, env=env, capture_output=True, text=True,
                              timeout=timeout_quick if quick else timeout_full)
    except subprocess.TimeoutExpired:
        result["error"] = f"timed out after {timeout_quick if quick else timeout_full} s"
        return result
    result["seconds"] = round(time.perf_counter() - start, 1)
    if log_dir is not None:  # the whole output, for when a row says "not measured"
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / f"{name}.log").write_text(f"$ {' '.join(cmd)}\n{proc.stdout}\n--- stderr ---\n{proc.stderr}")
    log(f"[{name}] exit {proc.returncode} after {result['seconds']} s")
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        result["error"] = f"exit {proc.returncode}: " + " | ".join(tail)
        if not out.is_file():
            return result
    try:
        data = json.loads(out.read_text())
    except (OSError, ValueError) as exc:
        result["error"] = f"unreadable JSON from {script}: {exc}"
        return result
    result["raw"] = data
    result["figures"] = add_goals(name, _from_external(data, name))
    return result


# Goals the issues set for figures computed by the other engineers' scripts (matched by words in the figure name).
EXTERNAL_GOALS = {
    "inference": [(("ratio",), "<=", 1.3)],
    "training": [(("ratio",), ">=", 20.0), (("speedup",), ">=", 20.0)],
}


def add_goals(bench: str, rows: list[dict]) -> list[dict]:
    for row in rows:
        if row.get("goal"):
            continue
        for words, op, target in EXTERNAL_GOALS.get(bench, []):
            if all(w in row["name"].lower() for w in words):
                row["goal"] = f"{op} {target:g}"
                row["passed"] = check_goal(row.get("median"), op, target)
                break
    return rows


# --- table --------------------------------------------------------------------------------------------------------


def _num(value: float | None) -> str:
    if value is None:
        return "–"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table_lines(results: list[dict]) -> list[str]:
    """A Markdown table (also readable in a terminal)."""
    lines = ["| figure | median | min–max | repeats | goal | pass |", "|---|---|---|---|---|---|"]
    for res in results:
        for fig in res["figures"]:
            unit = f" {fig['unit']}" if fig.get("unit") else ""
            span = f"{_num(fig.get('min'))}–{_num(fig.get('max'))}" if fig.get("repeats", 0) > 1 else "–"
            verdict = {True: "pass", False: "FAIL", None: ""}[fig.get("passed")]
            name = fig["name"] + (f" ({fig['note']})" if fig.get("note") else "")
            lines.append(f"| {name} | {_num(fig.get('median'))}{unit} | {span} | {fig.get('repeats', 0)} | "
                         f"{fig.get('goal') or ''} | {verdict} |")
        if res["error"]:
            lines.append(f"| {res['name']}: not measured — {res['error'][:160]} | | | | | |")
    return lines


def machine_line(info: dict) -> str:
    return (f"{info['cpu']}, {info['cores']} cores, {info.get('ram_gb', '?')} GB RAM, Python {info['python']}, "
            f"TensorFlow {info.get('tensorflow')}, Keras {info.get('keras')}, PySide6 {info.get('PySide6-Essentials')}, "
            f"{info['os']}, load average at start {info.get('load_avg_at_start')}, commit {info.get('git_commit')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller sizes (a few minutes)")
    parser.add_argument("--json", metavar="OUT", help="write all figures and the machine to this JSON file "
                        "(and each benchmark's output to OUT.logs/)")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these benchmarks")
    args = parser.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    info = machine_info()
    log("machine: " + machine_line(info))
    started = time.time()
    results = []
    with tempfile.TemporaryDirectory(prefix="xrayviewer-bench-") as tmp:
        for name in args.only or list(BENCHMARKS):
            results.append(run_benchmark(name, args.quick, Path(tmp), log,
                                         Path(args.json).with_suffix(".logs") if args.json else None))
    report = {"machine": info, "quick": args.quick, "started": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                              time.gmtime(started)),
              "seconds": round(time.time() - started, 1), "benchmarks": results}
    print(f"\nXRayViewer benchmarks ({'quick' if args.quick else 'full'} run, {report['started']}, "
          f"{report['seconds']:.0f} s)\nMachine: {machine_line(info)}\n")
    print("\n".join(table_lines(results)))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
        log(f"wrote {args.json}")
    missed = [fig["name"] for res in results for fig in res["figures"] if fig.get("passed") is False]
    broken = [res["name"] for res in results if res["error"]]
    print(f"\ngoals missed: {', '.join(missed) or 'none'}; benchmarks not measured: {', '.join(broken) or 'none'}")
    return 0  # a missed goal is a finding to read in the table, not a failed run


if __name__ == "__main__":
    sys.exit(main())
