"""Are *relative* whole-model timings reproducible where absolute ones are not? A re-analysis of the launches that
``bench/timing_reproducibility.py`` recorded (no new timing).

On these VMs a whole launch runs faster or slower than the next (in one launch every architecture was 30 % faster),
so a model's time divided by a reference timed in the same launch, interleaved with it, cancels that drift. Two
references per launch: the geometric mean of all six architectures, and one of them (the first) alone, as a profile
would time one fixed reference model next to the others. Spread = ``(max - min) / median`` across launches, as in
the source bench.

    python bench/timing_relative.py

Reads ``bench/results/timing-reproducibility.json``; writes ``bench/results/timing-relative.{json,md}``.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import RESULTS, write  # noqa: E402


def spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values)


def main() -> None:
    source = json.loads((RESULTS / "timing-reproducibility.json").read_text())
    launches: dict[str, dict[str, list[float]]] = {}
    for row in source["rows"]:
        launches.setdefault(row["setting"], {})[row["config"]] = [float(v) for v in row["launch_medians_ms"].split()]
    rows, summary = [], []
    for setting, by_config in launches.items():
        names = list(by_config)
        count = len(by_config[names[0]])
        geo = [math.exp(statistics.fmean(math.log(by_config[n][i]) for n in names)) for i in range(count)]
        reference = by_config[names[0]]
        absolute, to_geo, to_ref = [], [], []
        for name in names:
            times = by_config[name]
            absolute.append(spread(times))
            to_geo.append(spread([t / g for t, g in zip(times, geo)]))
            row = {"setting": setting, "config": name, "absolute": round(absolute[-1], 4),
                   "to_launch_geomean": round(to_geo[-1], 4)}
            if name != names[0]:
                to_ref.append(spread([t / r for t, r in zip(times, reference)]))
                row["to_reference_model"] = round(to_ref[-1], 4)
            rows.append(row)
        summary.append({"setting": setting, "launches": count,
                        "absolute_median": round(statistics.median(absolute), 4),
                        "absolute_worst": round(max(absolute), 4),
                        "to_geomean_median": round(statistics.median(to_geo), 4),
                        "to_geomean_worst": round(max(to_geo), 4),
                        "to_reference_median": round(statistics.median(to_ref), 4),
                        "to_reference_worst": round(max(to_ref), 4)})
    notes = (f"Spread across launches ((max - min) / median) of the per-launch medians recorded by "
             f"`{source['command']}` on {source['date']} (load average before {source['load_average'][0][0]:.2f}): "
             "absolute, as a ratio to the geometric mean of the six architectures in the same launch, and as a "
             f"ratio to one reference architecture ({names[0]}) in the same launch. No new timing.")
    write("timing-relative", rows, notes, {"summary": summary})
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
