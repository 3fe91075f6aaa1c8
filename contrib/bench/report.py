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
    "randwrite-qd1": ("lat_mean_us", "µs mean latency (submit to complete)", False),
    "randread-qd16": ("iops", "IOPS", True),
    "randwrite-qd16": ("iops", "IOPS", True),
    "randwrite-qd16-empty": ("iops", "IOPS", True),
    "randrw-70-30-qd16": ("iops", "IOPS", True),
    "seqread-1m-qd8": ("mib_s", "MiB/s", True),
    "seqwrite-1m-qd8": ("mib_s", "MiB/s", True),
    "fdatasync-4k": ("sync_p50_us", "µs fdatasync p50", False),
    "buffered-seqread": ("mib_s", "MiB/s", True),
    "randread-qd1-4j": ("lat_mean_us", "µs mean latency (submit to complete)", False),
    "randread-qd16-4j": ("iops", "IOPS", True),
    "randwrite-qd16-4j": ("iops", "IOPS", True),
    "fdatasync-4k-4j": ("sync_p50_us", "µs fdatasync p50", False),
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


# vdiskfs-dev: over /dev/fuse; vdiskfs-ring: FUSE over io_uring; vdiskfs-pt:
# with -o passthrough=on (raw runs only)
TARGETS = ("host", "vdiskfs-dev", "vdiskfs-ring", "vdiskfs-pt", "qsd")


def main():
    results, out, fmt_name, size, runtime, reps = sys.argv[1:]
    rows = [json.loads(line) for line in open(results) if line.strip()]
    workloads = [w for w in METRIC if any(r["workload"] == w for r in rows)]
    cols = [t for t in TARGETS if any(r["target"] == t for r in rows)]
    ours = [t for t in cols if t.startswith("vdiskfs")]
    over_qsd = [t for t in ours if t != "vdiskfs-pt"]
    med = {}
    for w in workloads:
        for t in cols:
            sel = [r for r in rows if r["workload"] == w and r["target"] == t]
            med[(w, t)] = {k: median(sel, k) for k in
                           ("iops", "mib_s", "lat_mean_us", "lat_p50_us", "sync_p50_us",
                            "sync_p99_us", "cpu_s", "iops_per_cpu_s")}
    print(f"\nformat {fmt_name}, {size} image, {runtime} s per run, median of {reps} "
          "interleaved runs\n")
    heads = cols + [f"{t}/host" for t in ours] + [f"{t}/qsd" for t in over_qsd]
    print("| workload | metric | " + " | ".join(heads) + " |")
    print("|---|---|" + "---:|" * len(heads))

    def line(w, unit, key):
        m = {t: med[(w, t)][key] for t in cols}
        cells = [m[t] for t in cols] + [ratio(m[t], m["host"]) for t in ours]
        cells += [ratio(m[t], m["qsd"]) for t in over_qsd]
        print(f"| {w} | {unit} | " + " | ".join(fmt(c) for c in cells) + " |")
        return m

    summary = []
    for w in workloads:
        key, unit, _ = METRIC[w]
        m = line(w, unit, key)
        s = {"workload": w, "metric": key, **m}
        for t in ours:
            s[t.replace("-", "_") + "_over_host"] = ratio(m[t], m["host"])
        for t in over_qsd:
            s[t.replace("-", "_") + "_over_qsd"] = ratio(m[t], m["qsd"])
        summary.append(s)
        if key == "sync_p50_us":
            line(w, "µs fdatasync p99", "sync_p99_us")
    print("\nDaemon CPU efficiency (IOPS per CPU second, higher is better):\n")
    print("| workload | " + " | ".join(over_qsd + ["qsd"] + [f"{t}/qsd" for t in over_qsd]) + " |")
    print("|---|" + "---:|" * (2 * len(over_qsd) + 1))
    for w in workloads:
        if METRIC[w][0] != "iops":
            continue
        e = {t: med[(w, t)]["iops_per_cpu_s"] for t in over_qsd + ["qsd"]}
        cells = [e[t] for t in over_qsd + ["qsd"]] + [ratio(e[t], e["qsd"]) for t in over_qsd]
        print(f"| {w} | " + " | ".join(fmt(c) for c in cells) + " |")
    json.dump({"format": fmt_name, "size": size, "runtime_s": int(runtime), "reps": int(reps),
               "summary": summary, "runs": rows}, open(out, "w"), indent=1)
    print(f"\nraw results: {out}")


if __name__ == "__main__":
    main()
