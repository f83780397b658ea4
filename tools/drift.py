"""How far the working tree's metrics drift from a commit's, per metric, against a tolerance.

Usage: python -m tools.drift [--against REV] [--run] [--tol PATTERN=VALUE ...] [--all]

Compares every ``metrics/**/*.json`` (timings in ``metrics/efficiency/`` and per-clip lists are
left out) as written in the working tree with the same files at git revision ``REV`` (default
``HEAD``, i.e. the committed results). ``--run`` first runs ``dvc repro`` (a clean clone rebuilds
everything: about 12 minutes on an idle 2-core machine), so one command re-runs the pipeline and
reports. Exits 1 when any metric
drifts past its tolerance, changes a non-numeric value, or disappears; 0 otherwise.

Each JSON leaf is one metric, named ``file:key.sub[index]``. Its tolerance is the first entry of
:data:`TOLERANCES` whose pattern (fnmatch, case-sensitive) matches that name: an absolute
number, ``"N%"`` relative to the committed value, or ``"ignore"``. ``--tol`` entries go before
the built-in ones. Counts and settings must match exactly; learned quantities get room for
float kernels that differ between CPUs and builds (docs/reproducibility.md).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

ROOT = Path(__file__).resolve().parent.parent
METRICS = "metrics"

# (pattern, tolerance), first match wins. The learned ones are judgement: the embedded default's
# 300-step Stage I moved 0.125 dB in val PSNR and 0.07 in codebook use on a machine whose x264
# wrote one raw video differently, and a machine change alone should stay within that scale.
TOLERANCES: list[tuple[str, float | str]] = [
    ("efficiency/*", "ignore"),
    ("*:*per_clip*", "ignore"),  # per-clip values: the means below are what docs/results.md cites
    ("*:*details*", 0),  # per-metric video counts and backends
    ("*psnr*", 0.5),  # dB
    ("*ssim*", 0.02),
    ("*:*codebook_usage*", 0.1),  # share of the codes
    ("*:*perplexity*", "20%"),
    ("*:*val_acc*", 0.05),
    ("*:*chance_*", 0.02),
    ("*:*brightness_error*", 0.5),  # 0-255 scale
    ("*:*akd", 0.5),  # pixels
    ("*:*ids", 0.03),
    ("*:*face_cons", 0.03),
    ("*:*flicker_index", 0.05),
    ("*:*flow_score", 0.05),
    ("*:*warping_error", "20%"),
    ("*:*fvd", "10%"),
    ("*:*lpips", 0.02),
    ("*", 0),  # everything else (counts, steps, parameters, labels) must match
]


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, leaf) pairs; list items are ``key[i]``."""
    if isinstance(value, dict):
        for key in sorted(value):
            yield from flatten(value[key], f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list):
        if not value:
            yield prefix, []
        for i, item in enumerate(value):
            yield from flatten(item, f"{prefix}[{i}]")
    else:
        yield prefix, value


def tolerance_for(name: str, table: Sequence[tuple[str, float | str]]) -> float | str:
    for pattern, tol in table:
        if fnmatch.fnmatchcase(name, pattern):
            return tol
    return 0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def compare(
    old: dict[str, Any], new: dict[str, Any], table: Sequence[tuple[str, float | str]] = TOLERANCES
) -> list[dict]:
    """One row per metric: name, old, new, drift, tolerance, status (ok/DRIFT/missing/new/ignored).

    ``old`` and ``new`` map a metrics file (relative to metrics/) to its parsed JSON.
    """
    gone = sorted(f for f in old if f not in new)
    # a file that is gone entirely is one row, not one per metric it held
    rows = [{"metric": f"{f}:*", "committed": "(file)", "now": _ABSENT, "drift": None,
             "tolerance": tolerance_for(f"{f}:*", table),
             "status": "ignored" if tolerance_for(f"{f}:*", table) == "ignore" else "missing"} for f in gone]
    flat_old = {f"{f}:{k}": v for f, data in old.items() if f in new for k, v in flatten(data)}
    flat_new = {f"{f}:{k}": v for f, data in new.items() for k, v in flatten(data)}
    for name in sorted(set(flat_old) | set(flat_new)):
        tol = tolerance_for(name, table)
        a, b = flat_old.get(name, _ABSENT), flat_new.get(name, _ABSENT)
        row = {"metric": name, "committed": a, "now": b, "drift": None, "tolerance": tol}
        if tol == "ignore":
            row["status"] = "ignored"
        elif a is _ABSENT:
            row["status"] = "new"  # a metric the commit does not have yet: reported, not a failure
        elif b is _ABSENT:
            row["status"] = "missing"
        elif _number(a) and _number(b):
            drift = float(b) - float(a)
            limit = abs(float(a)) * float(tol[:-1]) / 100 if isinstance(tol, str) else float(tol)
            row["drift"] = drift
            same = drift == 0 or (math.isnan(float(a)) and math.isnan(float(b)))
            row["status"] = "ok" if same or abs(drift) <= limit else "DRIFT"
        else:
            row["status"] = "ok" if a == b else "DRIFT"
        rows.append(row)
    return rows


class _Absent:
    def __repr__(self) -> str:
        return "-"


_ABSENT = _Absent()


def read_worktree(root: Path) -> dict[str, Any]:
    base = root / METRICS
    return {str(p.relative_to(base)): json.loads(p.read_text()) for p in sorted(base.rglob("*.json"))}


def read_revision(root: Path, rev: str) -> dict[str, Any]:
    def git(*args: str) -> str:
        proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"drift: git {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    names = [n for n in git("ls-tree", "-r", "--name-only", rev, "--", METRICS).splitlines() if n.endswith(".json")]
    return {n[len(METRICS) + 1:]: json.loads(git("show", f"{rev}:{n}")) for n in names}


def _fmt(value: Any) -> str:
    if _number(value) and isinstance(value, float):
        return f"{value:.6g}"
    text = json.dumps(value) if not isinstance(value, _Absent) else "-"
    return text if len(text) <= 28 else text[:25] + "..."


def report(rows: list[dict], show_all: bool = False) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    shown = [r for r in rows if show_all or r["status"] not in ("ignored",) and (r["status"] != "ok" or r["drift"])]
    lines = [f"{'metric':<66} {'committed':>12} {'now':>12} {'drift':>10} {'tolerance':>9}  status"]
    for r in shown:
        drift = "" if r["drift"] is None else f"{r['drift']:+.4g}"
        lines.append(f"{r['metric']:<66} {_fmt(r['committed']):>12} {_fmt(r['now']):>12} {drift:>10} "
                     f"{str(r['tolerance']):>9}  {r['status']}")
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    lines.append(f"{len(rows)} metrics: {summary}"
                 + ("" if show_all else " (exact matches and ignored ones not listed; --all lists them)"))
    return "\n".join(lines)


def _parse_tol(text: str) -> tuple[str, float | str]:
    pattern, sep, value = text.rpartition("=")
    if not sep or not pattern:
        raise argparse.ArgumentTypeError(f"--tol wants PATTERN=VALUE, got {text!r}")
    if value == "ignore" or (value.endswith("%") and _is_float(value[:-1])):
        return pattern, value
    if _is_float(value):
        return pattern, float(value)
    raise argparse.ArgumentTypeError(f"--tol {text!r}: VALUE must be a number, N% or ignore")


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def main(argv: Sequence[str] | None = None, root: Path = ROOT) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.drift", description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", default="HEAD", metavar="REV",
                        help="git revision holding the reference metrics (default HEAD)")
    parser.add_argument("--run", action="store_true", help="run `dvc repro` first")
    parser.add_argument("--tol", action="append", type=_parse_tol, default=[], metavar="PATTERN=VALUE",
                        help="extra tolerance, before the built-in ones (e.g. '*val_psnr*=1.0', 'stage1.json:*=5%%')")
    parser.add_argument("--all", action="store_true", help="list every metric, not only the ones that moved")
    args = parser.parse_args(argv)
    if args.run:
        env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        if subprocess.run(["dvc", "repro"], cwd=root, env=env).returncode != 0:
            print("drift: dvc repro failed", file=sys.stderr)
            return 2
    rows = compare(read_revision(root, args.against), read_worktree(root), [*args.tol, *TOLERANCES])
    print(f"metrics in the working tree against {args.against}")
    print(report(rows, args.all))
    return 1 if any(r["status"] in ("DRIFT", "missing") for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
