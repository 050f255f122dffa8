"""Draws full-refresh throughput against parallelism, with Stripe's rate-limit ceiling."""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

src, dst = sys.argv[1], sys.argv[2]
rows = list(csv.DictReader(open(src)))
if not rows:
    print(f"{src} is empty: no plot")
    sys.exit(0)
p = [int(r["parallelism"]) for r in rows]
rate = [float(r["objects_per_second"]) for r in rows]
ceiling = float(rows[0]["ceiling"]) if rows else 10000.0
fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(p, rate, marker="o", label="stripe_sync full refresh")
ax.axhline(ceiling, color="red", linestyle="--", label="Stripe rate limit: 100 req/s x 100 objects")
ax.axhline(0.8 * ceiling, color="orange", linestyle=":", label="goal: 80% of the limit")
ax.set_xscale("log", base=2)
ax.set_xticks(p)
ax.set_xticklabels([str(x) for x in p])
ax.set_xlabel("concurrent requests (stripe_sync.max_parallel_requests)")
ax.set_ylabel("objects / s")
ax.set_title("Full refresh of customers, fake Stripe at 250 ms latency, 100 req/s")
ax.set_ylim(0, ceiling * 1.15)
ax.legend(loc="lower right")
fig.tight_layout()
fig.savefig(dst, dpi=110)
print(f"wrote {dst}")
