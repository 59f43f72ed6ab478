"""The refined front: what the refine stage's fine-tunes found (:mod:`nas.search.refine`), one point per
architecture, read from the companion study's finished jobs.

A refined point's accuracy (what selects, as everywhere) is its search-split accuracy after its own fine-tune,
the mean over seeds; its test accuracy (what is reported) is the mean over seeds with a standard error that counts
both sources of spread: the test images (shared by the seeds, so not averaged away: the mean of the seeds'
binomial variances) and the seeds (their variance over their number). The hardware metrics are the search's
(predicted latency at the fine-tuned routing, the energy estimate), the measured latency beside them.

How far the search's proxy can be trusted is Kendall's tau-b between the inherited accuracy its trials were
ranked by and the refined test accuracy, over the refined architectures.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from search_spaces import ArchConfig

from .. import attributes as attr
from .report import METRIC_LABELS, Point, pareto_front, plt

SETTINGS = "settings"  # on the companion study: the refine's {top, seeds, epochs} as last run


@dataclass
class Refined(Point):
    """A refined architecture: :attr:`accuracy` is its fine-tunes' search-split accuracy (mean over seeds)."""

    inherited: float = math.nan  # the search trial's accuracy, which ranked it in the search
    seeds: int = 0
    epochs: int = 0
    measured_ms: float | None = None  # on this device, with its first seed's weights
    weights: list[str] = field(default_factory=list)  # each seed's fine-tuned weights, as its worker saved them


def combine(accuracies: list[float], ses: list[float]) -> tuple[float, float]:
    """The mean over seeds of accuracies on the same images, and its standard error (see the module's text)."""
    mean = float(np.mean(accuracies))
    image_var = float(np.mean(np.square(ses)))
    seed_var = float(np.var(accuracies, ddof=1)) / len(accuracies) if len(accuracies) > 1 else 0.0
    return mean, math.sqrt(image_var + seed_var)


def kendall_tau(a, b) -> float:
    """Kendall's tau-b (ties in either ranking counted as neither concordant nor discordant); nan below 2 items."""
    n, concordant, discordant, ties_a, ties_b = len(a), 0, 0, 0, 0
    for i in range(n):
        for j in range(i + 1, n):
            da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif da == db:
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
    return (concordant - discordant) / denominator if denominator else float("nan")


def refined_points(ostudy: optuna.Study, rstudy: optuna.Study | None) -> list[Refined]:
    """One point per refined architecture, of the jobs of the refine's latest settings (its epochs) that finished;
    empty without a refine."""
    if rstudy is None:
        return []
    epochs = (rstudy.user_attrs.get(SETTINGS) or {}).get("epochs")
    by_config: dict[str, list] = {}
    for t in rstudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        a = t.user_attrs
        if attr.TEST_ACCURACY in a and (epochs is None or a.get(attr.EPOCHS) == epochs):
            runs = by_config.setdefault(a[attr.CONFIG_ID], [])
            if all(r.user_attrs[attr.SEED] != a[attr.SEED] for r in runs):  # a job finished twice counts once
                runs.append(t)
    searched = {t.number: t for t in ostudy.get_trials(deepcopy=False)}
    measured = {k[len(attr.MEASURED_PREFIX):]: v for k, v in rstudy.user_attrs.items()
                if k.startswith(attr.MEASURED_PREFIX)}
    out = []
    for config_id, runs in by_config.items():
        runs.sort(key=lambda t: t.user_attrs[attr.SEED])
        first = runs[0].user_attrs
        trial = searched.get(first[attr.SEARCH_TRIAL])
        if trial is None:
            continue  # a refine of another study of the same name
        test, test_se = combine([r.user_attrs[attr.TEST_ACCURACY] for r in runs],
                                [r.user_attrs[attr.TEST_SE] for r in runs])
        search, search_se = combine([r.user_attrs[attr.SEARCH_ACCURACY] for r in runs],
                                    [r.user_attrs[attr.SEARCH_SE] for r in runs])
        attrs = {attr.TEST_ACCURACY: test, attr.TEST_SE: test_se, attr.SEARCH_SE: search_se,
                 attr.SEARCH_IMAGES: first.get(attr.SEARCH_IMAGES, 0)}
        out.append(Refined(
            trial=trial, config=ArchConfig.from_json(first[attr.CONFIG]), accuracy=search,
            latency_ms=float(np.mean([r.user_attrs[attr.LATENCY_MS] for r in runs])),
            reference=trial.user_attrs.get(attr.REFERENCE),
            energy_uj=float(np.mean([r.user_attrs.get(attr.ENERGY_UJ, math.nan) for r in runs])), attrs=attrs,
            inherited=float(trial.user_attrs.get(attr.SEARCH_ACCURACY, math.nan)), seeds=len(runs),
            epochs=int(first[attr.EPOCHS]), measured_ms=measured.get(config_id),
            weights=[r.user_attrs.get(attr.WEIGHTS_FILE, "") for r in runs]))
    return sorted(out, key=lambda p: p.trial.number)


@dataclass
class Trust:
    """How well the search's proxy ordered the refined architectures."""

    tau: float  # Kendall's tau-b: inherited accuracy vs refined test accuracy
    n: int  # over this many architectures
    disagreement: str  # one line where the two orders differ; "" where they agree

    @property
    def text(self) -> str:
        if self.n < 2:
            return "one refined architecture: no order to compare"
        return f"Kendall τ {self.tau:.2f} between inherited and refined accuracy over {self.n} architectures"


def trust(points: list[Refined]) -> Trust:
    """Kendall's tau between the inherited and the refined (test) accuracy, and where the orders differ."""
    tau = kendall_tau([p.inherited for p in points], [p.test_accuracy for p in points])
    by_search = [p.label for p in sorted(points, key=lambda p: -p.inherited)]
    by_refine = [p.label for p in sorted(points, key=lambda p: -p.test_accuracy)]
    line = ""
    if by_search != by_refine:
        line = (f"the refined order differs from the search's: after fine-tuning {' > '.join(by_refine)}; "
                f"inherited {' > '.join(by_search)}")
    return Trust(tau, len(points), line)


def refined_front(points: list[Refined], metrics: tuple[str, ...]) -> list[Refined]:
    """The refined points no other beats on refined accuracy and the hardware metrics."""
    return pareto_front(points, metrics)  # type: ignore[return-value]


def write_refined_csv(points: list[Refined], front: list[Refined], path: Path) -> Path:
    """``refined.csv``: one row per refined architecture."""
    on_front = {id(p) for p in front}
    depth = max((p.config.depth for p in points), default=0)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "trial", attr.CONFIG_ID, "inherited_accuracy", attr.SEARCH_ACCURACY,
                         attr.TEST_ACCURACY, attr.TEST_SE, "seeds", "epochs", attr.LATENCY_MS, "measured_ms",
                         attr.ENERGY_UJ, "refined_pareto"] + [f"block{i}" for i in range(depth)])
        for p in points:
            writer.writerow([p.label, p.trial.number, p.config.id, f"{p.inherited:.4f}", f"{p.accuracy:.4f}",
                             f"{p.test_accuracy:.4f}", f"{p.test_se:.4f}", p.seeds, p.epochs, f"{p.latency_ms:.4f}",
                             "" if p.measured_ms is None else f"{p.measured_ms:.4f}",
                             "" if math.isnan(p.energy_uj) else f"{p.energy_uj:.4f}", int(id(p) in on_front)]
                            + [b.describe() for b in p.config.blocks])
    return path


def plot_refined(points: list[Refined], front: list[Refined], title: str, path: Path,
                 metric: str = "latency_ms") -> Path:
    """``refined.png``: each refined architecture's inherited accuracy (hollow) and its refined test accuracy ± 1 SE
    (filled, the refined front in red), joined by a line, against ``metric``."""
    on_front = {id(p) for p in front}
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for p in points:
        x = p.value(metric)
        ax.plot([x, x], [p.inherited, p.test_accuracy], color="0.75", lw=0.8, zorder=1)
        ax.annotate(p.label, (x, p.test_accuracy), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.scatter([p.value(metric) for p in points], [p.inherited for p in points], s=22, facecolors="none",
               edgecolors="0.4", label="inherited (search split)", zorder=2)
    for group, color, text in (([p for p in points if id(p) in on_front], "tab:red", "refined front"),
                               ([p for p in points if id(p) not in on_front], "tab:blue", "refined, off the front")):
        if group:
            ax.errorbar([p.value(metric) for p in group], [p.test_accuracy for p in group],
                        yerr=[p.test_se for p in group], fmt="o", color=color, ms=5, capsize=2,
                        label=f"{text} (test, ± 1 SE)", zorder=3)
    ax.set_xlabel(METRIC_LABELS[metric])
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_refined(points: list[Refined], front: list[Refined], out: Path, title: str) -> list[Path]:
    """``refined.csv`` and a ``refined.png`` per hardware metric the points have (``refined-energy.png`` for energy)."""
    files = [write_refined_csv(points, front, out / "refined.csv")]
    for metric, name in (("latency_ms", "refined.png"), ("energy_uj", "refined-energy.png")):
        if any(not math.isnan(p.value(metric)) for p in points):
            files.append(plot_refined(points, front, title, out / name, metric))
    return files


__all__ = ["Refined", "Trust", "combine", "kendall_tau", "plot_refined", "refined_front", "refined_points", "trust",
           "write_refined", "write_refined_csv"]
