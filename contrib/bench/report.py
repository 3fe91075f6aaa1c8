#!/usr/bin/env python3
"""Medians and ratios of a contrib/bench/run.sh run, as a markdown table and JSON.

usage: report.py RESULTS.jsonl OUT.json FORMAT SIZE RUNTIME REPS
"""
import json
import statistics
import sys

# workload -> (metric, unit, higher is better)
METRIC = {
    "randread-qd1": ("lat_mean_us", "µs mean latency (submit to complete)", False),
    "randread-qd16": ("iops", "IOPS", True),
    "randwrite-qd16": ("iops", "IOPS", True),
    "randwrite-qd16-empty": ("iops", "IOPS", True),
    "randrw-70-30-qd16": ("iops", "IOPS", True),
    "seqread-1m-qd8": ("mib_s", "MiB/s", True),
    "seqwrite-1m-qd8": ("mib_s", "MiB/s", True),
    "fdatasync-4k": ("sync_p50_us", "µs fdatasync p50", False),
    "buffered-seqread": ("mib_s", "MiB/s", True),
}


def median(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def ratio(a, b):
    return round(a / b, 2) if a is not None and b else None


def fmt(v):
    if v is None:
        return "–"
    return f"{v:,.0f}" if v >= 100 else f"{v:.2f}"


def main():
    results, out, fmt_name, size, runtime, reps = sys.argv[1:]
    rows = [json.loads(line) for line in open(results) if line.strip()]
    workloads = [w for w in METRIC if any(r["workload"] == w for r in rows)]
    med = {}
    for w in workloads:
        for t in ("host", "vdiskfs", "qsd"):
            sel = [r for r in rows if r["workload"] == w and r["target"] == t]
            med[(w, t)] = {k: median(sel, k) for k in
                           ("iops", "mib_s", "lat_mean_us", "lat_p50_us", "sync_p50_us",
                            "sync_p99_us", "cpu_s", "iops_per_cpu_s")}
    print(f"\nformat {fmt_name}, {size} image, {runtime} s per run, median of {reps} "
          "interleaved runs\n")
    print("| workload | metric | host | vdiskfs | qsd | vdiskfs/host | vdiskfs/qsd |")
    print("|---|---|---:|---:|---:|---:|---:|")
    summary = []
    for w in workloads:
        key, unit, _ = METRIC[w]
        h, v, q = (med[(w, t)][key] for t in ("host", "vdiskfs", "qsd"))
        print(f"| {w} | {unit} | {fmt(h)} | {fmt(v)} | {fmt(q)} | {fmt(ratio(v, h))} | "
              f"{fmt(ratio(v, q))} |")
        summary.append({"workload": w, "metric": key, "host": h, "vdiskfs": v, "qsd": q,
                        "vdiskfs_over_host": ratio(v, h), "vdiskfs_over_qsd": ratio(v, q)})
        if w == "fdatasync-4k":
            h, v, q = (med[(w, t)]["sync_p99_us"] for t in ("host", "vdiskfs", "qsd"))
            print(f"| {w} | µs fdatasync p99 | {fmt(h)} | {fmt(v)} | {fmt(q)} | "
                  f"{fmt(ratio(v, h))} | {fmt(ratio(v, q))} |")
    print("\nDaemon CPU efficiency (IOPS per CPU second, higher is better):\n")
    print("| workload | vdiskfs | qsd | vdiskfs/qsd |")
    print("|---|---:|---:|---:|")
    for w in workloads:
        if METRIC[w][0] != "iops":
            continue
        v, q = med[(w, "vdiskfs")]["iops_per_cpu_s"], med[(w, "qsd")]["iops_per_cpu_s"]
        print(f"| {w} | {fmt(v)} | {fmt(q)} | {fmt(ratio(v, q))} |")
    json.dump({"format": fmt_name, "size": size, "runtime_s": int(runtime), "reps": int(reps),
               "summary": summary, "runs": rows}, open(out, "w"), indent=1)
    print(f"\nraw results: {out}")


if __name__ == "__main__":
    main()
