"""Rekindle/restic and Rekindle/Borg ratios from the shared harness's raw results.

Reads the JSON lines that ../shared/bench/run_peers.py appends to WORK/results/peers-*.jsonl:
one {"meta": ...} line, then one record per (rep, tool, phase) with wall (s), cpu (s),
rss_mb (peak RSS, MiB, from GNU time), repo_bytes, and for the "mutated" phase repo_growth.
For every metric it prints the median (min..max) per tool, the ratio of Rekindle's median to
each peer's median (in brackets: the range of the per-repetition ratios) and, for the targets
(ratio to restic), PASS or FAIL. Stdlib only: it runs with whatever python runs the harness.

Exit status: 0 (a missed target is a finding, not an error; --strict makes it 1),
2 when the input has no usable records.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SUBJECT = "rekindle"
MB = 1e6
NOISY_OTHER = 0.25  # cores used by others during a timed command (run_peers.py 'other')


@dataclass(frozen=True)
class Metric:
    label: str
    phase: str
    value: Callable[[dict[str, object]], float | None]
    fmt: str
    target: float | None  # maximum Rekindle/restic ratio; None = shown, no target


def _field(name: str, scale: float = 1.0) -> Callable[[dict[str, object]], float | None]:
    def get(rec: dict[str, object]) -> float | None:
        v = rec.get(name)
        return float(v) * scale if isinstance(v, int | float) else None

    return get


METRICS = (
    Metric("initial backup: wall s", "initial", _field("wall"), "{:.1f}", 0.67),
    Metric("no-change backup: wall s", "nochange", _field("wall"), "{:.2f}", 0.5),
    Metric("backup after mutate: wall s", "mutated", _field("wall"), "{:.2f}", None),
    Metric("repo growth after mutate: MB", "mutated", _field("repo_growth", 1 / MB), "{:.1f}", 1.0),
    Metric("initial repo size: MB", "initial", _field("repo_bytes", 1 / MB), "{:.0f}", 1.0),
    Metric("restore: wall s", "restore", _field("wall"), "{:.1f}", 0.67),
    Metric("initial backup: peak RSS MiB", "initial", _field("rss_mb"), "{:.0f}", 1.0),
    Metric("no-change backup: peak RSS MiB", "nochange", _field("rss_mb"), "{:.0f}", 1.0),
    Metric("backup after mutate: peak RSS MiB", "mutated", _field("rss_mb"), "{:.0f}", 1.0),
    Metric("restore: peak RSS MiB", "restore", _field("rss_mb"), "{:.0f}", 1.0),
    Metric("initial backup: CPU s", "initial", _field("cpu"), "{:.1f}", None),
    Metric("restore: CPU s", "restore", _field("cpu"), "{:.1f}", None),
)


def find_results(path: Path) -> Path:
    """A results file, or the newest peers-*.jsonl in a directory."""
    if path.is_dir():
        files = sorted(path.glob("peers-*.jsonl"), key=lambda p: p.stat().st_mtime)
        if not files:
            raise SystemExit(f"no peers-*.jsonl in {path}")
        return files[-1]
    return path


def load(path: Path) -> tuple[dict[str, object], list[dict[str, object]]]:
    meta: dict[str, object] = {}
    records: list[dict[str, object]] = []
    with path.open() as f:
        for raw in f:
            line = raw.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                continue  # a torn last line of an interrupted run
            if "meta" in obj:
                meta = obj["meta"]
            elif "tool" in obj and "phase" in obj:
                records.append(obj)
    return meta, records


def load_all(paths: list[Path]) -> tuple[dict[str, object], list[dict[str, object]]]:
    """Pool several runs of the same dataset; reps become "run.rep" when there are several."""
    meta: dict[str, object] = {}
    pooled: list[dict[str, object]] = []
    for i, path in enumerate(paths):
        m, records = load(path)
        if meta and m.get("dataset") != meta.get("dataset"):
            raise SystemExit(f"{path}: another dataset than {paths[0]}; not pooled")
        meta = meta or m
        for r in records:
            r["rep"] = f"{i + 1}.{r['rep']}" if len(paths) > 1 else str(r["rep"])
        pooled += records
    return meta, pooled


def other_load(rec: dict[str, object]) -> float:
    v = rec.get("other")
    return float(v) if isinstance(v, int | float) else 0.0


def values(records: list[dict[str, object]], tool: str, m: Metric) -> dict[str, float]:
    """Per-repetition values of one metric for one tool (rep -> value)."""
    out: dict[str, float] = {}
    for r in records:
        if r["tool"] == tool and r["phase"] == m.phase:
            v = m.value(r)
            if v is not None:
                out[str(r["rep"])] = v
    return out


def summary(vals: list[float], fmt: str) -> str:
    if not vals:
        return "-"
    med = fmt.format(statistics.median(vals))
    if len(vals) == 1:
        return med
    return f"{med} ({fmt.format(min(vals))}..{fmt.format(max(vals))})"


def ratio(subj: dict[str, float], peer: dict[str, float]) -> tuple[float | None, list[float]]:
    """Ratio of medians, and the per-repetition ratios (same rep, both tools)."""
    if not subj or not peer or statistics.median(peer.values()) == 0:
        return None, []
    med = statistics.median(subj.values()) / statistics.median(peer.values())
    per_rep = [subj[k] / peer[k] for k in sorted(subj.keys() & peer.keys()) if peer[k]]
    return med, per_rep


def ratio_text(med: float | None, per_rep: list[float], target: float | None = None) -> str:
    if med is None:
        return "-"
    # Three decimals where two would hide which side of the target the ratio is on.
    digits = 2
    while target is not None and digits < 5 and round(med, digits) == target:
        digits += 1
    text = f"{med:.{digits}f}"
    if len(per_rep) > 1:
        text += f" ({min(per_rep):.2f}..{max(per_rep):.2f})"
    return text


def verified(records: list[dict[str, object]], tool: str) -> tuple[int, int]:
    """Restores of this tool that the harness verified identical to the source, and all."""
    checks = [r.get("verify") for r in records if r["tool"] == tool and r["phase"] == "restore"]
    ok = sum(1 for v in checks if isinstance(v, dict) and v.get("ok"))
    return ok, len(checks)


def build(
    meta: dict[str, object], records: list[dict[str, object]], base: str, other: str | None
) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    ok, total = verified(records, SUBJECT)
    for m in METRICS:
        subj = values(records, SUBJECT, m)
        peer = values(records, base, m)
        med, per_rep = ratio(subj, peer)
        verdict = None
        if m.target is not None:
            verdict = "n/a" if med is None else ("PASS" if med <= m.target else "FAIL")
            if m.phase == "restore" and ok < total:
                verdict = "FAIL"  # a fast restore that restored the wrong tree counts for nothing
        row: dict[str, object] = {
            "metric": m.label,
            "phase": m.phase,
            SUBJECT: summary(list(subj.values()), m.fmt),
            base: summary(list(peer.values()), m.fmt),
            f"{SUBJECT}/{base}": med,
            f"{SUBJECT}/{base} per rep": per_rep,
            "target": m.target,
            "verdict": verdict,
            "_ratio_text": ratio_text(med, per_rep, m.target),
        }
        if other:
            oth = values(records, other, m)
            omed, oper = ratio(subj, oth)
            row[other] = summary(list(oth.values()), m.fmt)
            row[f"{SUBJECT}/{other}"] = omed
            row[f"{SUBJECT}/{other} per rep"] = oper
            row["_other_text"] = ratio_text(omed, oper)
        rows.append(row)
    return rows


def markdown(
    meta: dict[str, object],
    records: list[dict[str, object]],
    rows: list[dict[str, object]],
    base: str,
    other: str | None,
    dropped: list[dict[str, object]] | None = None,
    max_other: float | None = None,
) -> str:
    ds = meta.get("dataset")
    ds = ds if isinstance(ds, dict) else {}
    reps = len({r["rep"] for r in records})
    lines = [
        f"Rekindle vs {base}"
        + (f" and {other}" if other else "")
        + f": {ds.get('files', '?')} files, {float(ds.get('bytes', 0)) / MB:.0f} MB"
        + f" (scale {ds.get('scale', '?')}), {reps} rep(s), cache {meta.get('cache', '?')};"
        + " values: median (min..max); ratios: ratio of medians (per-rep range)",
        "",
    ]
    head = ["metric", SUBJECT, base]
    if other:
        head.append(other)
    head += [f"{SUBJECT}/{base}", "target", "verdict"]
    if other:
        head.append(f"{SUBJECT}/{other}")
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join("---" for _ in head) + "|")
    for row in rows:
        target = row["target"]
        cells = [str(row["metric"]), str(row[SUBJECT]), str(row[base])]
        if other:
            cells.append(str(row[other]))
        cells += [
            str(row["_ratio_text"]),
            f"<= {target}" if target is not None else "-",
            str(row["verdict"] or "-"),
        ]
        if other:
            cells.append(str(row["_other_text"]))
        lines.append("| " + " | ".join(cells) + " |")
    tools = [SUBJECT, base] + ([other] if other else [])
    checks = ", ".join("{}: {}/{}".format(t, *verified(records, t)) for t in tools)
    lines += ["", f"restores verified identical to the source: {checks}"]
    noisy = [
        f"rep {r['rep']} {r['tool']} {r['phase']} {other_load(r):.2f}"
        for r in records
        if r["tool"] in tools and other_load(r) > NOISY_OTHER
    ]
    lines.append(
        f"commands with other CPU load > {NOISY_OTHER} cores (other jobs or writeback; "
        f"their timings are suspect): {', '.join(noisy) if noisy else 'none'}"
    )
    if dropped:
        lines.append(
            f"left out (--max-other {max_other}): "
            + ", ".join(f"rep {r['rep']} {r['tool']} {r['phase']}" for r in dropped)
        )
    targeted = [r for r in rows if r["target"] is not None]
    passed = sum(1 for r in targeted if r["verdict"] == "PASS")
    lines.append(f"targets met: {passed}/{len(targeted)}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "results",
        type=Path,
        nargs="+",
        help="peers-*.jsonl, or a results dir (its newest file); several runs are pooled",
    )
    ap.add_argument("--base", default="restic", help="peer the targets refer to (restic)")
    ap.add_argument("--other", default=None, help="second peer (default: the first borg-*)")
    ap.add_argument("--markdown", type=Path, help="also write the table here")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    ap.add_argument(
        "--max-other",
        type=float,
        default=None,
        help="leave out commands during which others used more CPU than this (cores)",
    )
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    a = ap.parse_args(argv)

    paths = [find_results(p) for p in a.results]
    meta, records = load_all(paths)
    dropped: list[dict[str, object]] = []
    if a.max_other is not None:
        dropped = [r for r in records if r["tool"] != "-" and other_load(r) > a.max_other]
        records = [r for r in records if not (r["tool"] != "-" and other_load(r) > a.max_other)]
    tools = sorted({str(r["tool"]) for r in records} - {"-"})
    if SUBJECT not in tools or a.base not in tools:
        print(f"{paths}: need results for {SUBJECT} and {a.base}, found {tools}", file=sys.stderr)
        return 2
    other = a.other or next((t for t in tools if t.startswith("borg")), None)
    rows = build(meta, records, a.base, other)
    text = markdown(meta, records, rows, a.base, other, dropped, a.max_other)
    print(text, end="")
    if a.markdown:
        a.markdown.write_text(text)
    if a.json:
        clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
        doc = {"sources": [str(p) for p in paths], "meta": meta, "rows": clean}
        a.json.write_text(json.dumps(doc, indent=1) + "\n")
    failed = any(r["verdict"] == "FAIL" for r in rows)
    return 1 if a.strict and failed else 0


if __name__ == "__main__":
    sys.exit(main())
