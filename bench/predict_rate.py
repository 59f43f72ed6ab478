"""How many predictions per second the latency predictor makes (the search calls it every trial).

Profiles the quick-start space with untuned kernels into a temporary table (the rate does not depend on the
timings), fits the predictor, then times ``predict`` on 2,000 sampled architectures.

    python bench/predict_rate.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import write  # noqa: E402

from latency_model import db  # noqa: E402
from latency_model.predictor import Predictor  # noqa: E402
from latency_model.profile import profile  # noqa: E402
from latency_model.settings import LatencySettings  # noqa: E402
from nas.study import Study  # noqa: E402


def main() -> None:
    space = Study.load("studies/quickstart.yaml").space
    with tempfile.TemporaryDirectory() as tmp:
        settings = LatencySettings(db=f"sqlite:///{tmp}/rate.db", trials=0, repeats=3, calibration=4,
                                   device="rate").resolved()
        profile(space, settings, kernel_root=Path(tmp) / "kernels")
        engine = db.connect(settings.db)
        predictor, _ = Predictor.fit(db.latest(engine, "rate"), "rate", models=db.model_rows(engine, "rate"))
    rng = np.random.default_rng(0)
    configs = [space.sample(rng) for _ in range(2000)]
    rows = []
    for label, use_split in (("router split from expert latencies", False), ("given MoE shares", True)):
        shares = {i: [0.5, 0.5] for i in range(space.depth)} if use_split else None
        start = time.perf_counter()
        for config in configs:
            predictor.predict(config, 1, moe_loads=shares)
        seconds = time.perf_counter() - start
        rows.append({"case": label, "predictions": len(configs), "seconds": seconds,
                     "per_second": len(configs) / seconds, "us_per_prediction": 1e6 * seconds / len(configs)})
        print(rows[-1])
    write("predict-rate", rows, notes="Quick-start space (4 blocks), batch 1, one process.")


if __name__ == "__main__":
    main()
