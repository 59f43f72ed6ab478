"""``nas report``: what a search found, as Pareto plots, a per-block allocation chart and a CSV.

The Pareto front is chosen on the study's objectives (search accuracy ↑, and predicted latency ↓ and/or estimated
energy ↓) of the complete trials; a single-objective study gets the front on (search accuracy, predicted latency), so
it gets the same picture. One plot per hardware metric against accuracy (``pareto.png`` for latency,
``pareto-energy.png`` for energy) marks that front: a three-objective front is marked in both. What the report
*shows* for the front is the test accuracy (data no selection has seen) with its binomial standard error: a front
chosen and reported on the same images would flatter itself. The reference trials (the all-dense model and the
paper's allocation, queued first in every new study) are marked. ``pays.png`` shows, per block, each choice's priced
time against dense's (:mod:`latency_model.pays`): where a choice can pay on this device at all.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from kernels.lazy import lazy_import
from latency_model.energy import DEFAULT_MODEL as DEFAULT_ENERGY_MODEL
from latency_model.energy import NOTES as ENERGY_NOTES
from latency_model.pays import SLOTS, WhereItPays
from search_spaces import ArchConfig
from search_spaces.space import block_options

from .. import attributes as attr

matplotlib = lazy_import("matplotlib")
plt = lazy_import("matplotlib.pyplot", before=lambda: matplotlib.use("Agg"))  # files only, never a display

METRIC_LABELS = {"latency_ms": "predicted latency (ms)",
                 "energy_uj": "estimated energy per image (µJ, operation counts x unit costs)"}
PLOT_FILES = {"latency_ms": "pareto.png", "energy_uj": "pareto-energy.png"}


@dataclass
class Point:
    trial: FrozenTrial
    config: ArchConfig
    accuracy: float  # on the search split: what the front is chosen on
    latency_ms: float
    reference: str | None
    energy_uj: float = math.nan  # nan: a trial stored without an energy estimate
    attrs: dict = field(default_factory=dict)  # the trial's attributes, with a test split evaluated after it

    @property
    def label(self) -> str:
        return self.reference or f"trial {self.trial.number}"

    def value(self, metric: str) -> float:
        return {"accuracy": self.accuracy, "latency_ms": self.latency_ms, "energy_uj": self.energy_uj}[metric]

    @property
    def search_se(self) -> float:
        return float(self.trial.user_attrs.get(attr.SEARCH_SE, math.nan))

    @property
    def test_accuracy(self) -> float:
        return float(self.attrs.get(attr.TEST_ACCURACY, math.nan))

    @property
    def test_se(self) -> float:
        return float(self.attrs.get(attr.TEST_SE, math.nan))

    @property
    def test_text(self) -> str:
        """``0.9612 ± 0.0102`` (test accuracy ± one standard error), or ``-`` for a trial without one."""
        return "-" if math.isnan(self.test_accuracy) else f"{self.test_accuracy:.4f} ± {self.test_se:.4f}"


def points(ostudy: optuna.Study) -> list[Point]:
    out = []
    study_attrs = ostudy.user_attrs
    for t in ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        attrs = attr.with_test_split(t.user_attrs, study_attrs, t.number)
        if attr.CONFIG in attrs and attr.SEARCH_ACCURACY in attrs and attr.LATENCY_MS in attrs:
            out.append(Point(t, ArchConfig.from_json(attrs[attr.CONFIG]), float(attrs[attr.SEARCH_ACCURACY]),
                             float(attrs[attr.LATENCY_MS]), attrs.get(attr.REFERENCE),
                             float(attrs.get(attr.ENERGY_UJ, math.nan)), attrs))
    return out


def shown_trials(ostudy: optuna.Study) -> list[FrozenTrial]:
    """The trials whose test accuracy a report shows: the Pareto front's and the reference trials'."""
    pts = points(ostudy)
    shown = {p.trial.number: p.trial for p in pareto_front(pts, front_metrics(ostudy))}
    shown.update({p.trial.number: p.trial for p in pts if p.reference})
    return [shown[n] for n in sorted(shown)]


def pareto_trials(ostudy: optuna.Study) -> list[FrozenTrial]:
    """The Pareto-optimal complete trials on the study's objectives (:func:`front_metrics`), feasible ones only when a
    budget applies, most accurate first; an architecture scored by several trials appears once."""
    feasible = [p for p in points(ostudy) if all(v <= 0 for v in p.trial.constraints.values())]
    return [p.trial for p in sorted(pareto_front(feasible, front_metrics(ostudy)), key=lambda p: -p.accuracy)]


def front_metrics(ostudy: optuna.Study) -> tuple[str, ...]:
    """What the study's Pareto front is chosen on: its objectives (stored when it was created; a study created
    before that optimizes accuracy and latency), and accuracy and latency for a single-objective study."""
    metrics = tuple(ostudy.user_attrs.get(attr.STUDY_METRICS) or ("accuracy", "latency_ms"))
    return metrics if len(metrics) > 1 else ("accuracy", "latency_ms")


def pareto_front(pts: list[Point], metrics: tuple[str, ...] = ("accuracy", "latency_ms")) -> list[Point]:
    """Points no other point beats on every metric (accuracy higher, the hardware metrics lower), cheapest on the
    first hardware metric first; points without a value of some metric are left out, and an architecture scored by
    several trials appears once (its first trial)."""
    hardware = metrics[1:]
    first: dict[str, Point] = {}
    for p in sorted(pts, key=lambda p: p.trial.number):
        if not any(math.isnan(p.value(m)) for m in metrics):
            first.setdefault(p.config.id, p)
    pts = list(first.values())

    def beats(q: Point, p: Point) -> bool:
        at_least = q.accuracy >= p.accuracy and all(q.value(m) <= p.value(m) for m in hardware)
        return at_least and any(q.value(m) != p.value(m) for m in metrics)

    front = [p for p in pts if not any(beats(q, p) for q in pts)]
    return sorted(front, key=lambda p: tuple(p.value(m) for m in hardware))


def write_csv(pts: list[Point], front: list[Point], path: Path) -> Path:
    on_front = {id(p) for p in front}
    depth = max((p.config.depth for p in pts), default=0)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial", attr.SEARCH_ACCURACY, attr.SEARCH_SE, attr.TEST_ACCURACY, attr.TEST_SE,
                         attr.LATENCY_MS, attr.ENERGY_UJ, "pareto", attr.REFERENCE, attr.CONFIG_ID, attr.WALL_S]
                        + [f"block{i}" for i in range(depth)])
        for p in sorted(pts, key=lambda p: p.trial.number):
            writer.writerow([p.trial.number, f"{p.accuracy:.4f}", f"{p.search_se:.4f}", f"{p.test_accuracy:.4f}",
                             f"{p.test_se:.4f}", f"{p.latency_ms:.4f}",
                             "" if math.isnan(p.energy_uj) else f"{p.energy_uj:.4f}", int(id(p) in on_front),
                             p.reference or "", p.config.id, p.trial.user_attrs.get(attr.WALL_S, "")]
                            + [b.describe() for b in p.config.blocks])
    return path


def accuracy_label(pts: list[Point]) -> str:
    """What the accuracy axis holds: the search split, after a fine-tune or with weights inherited from the
    supernet (as the trials say they were scored)."""
    modes = {p.trial.user_attrs.get(attr.EVALUATION, "finetune") for p in pts}
    how = {"finetune": "after the trial's fine-tune", "supernet": "weights inherited from the supernet"}
    return "search-split accuracy\n(" + " / ".join(how.get(m, m) for m in sorted(modes)) + ")"


def plot_pareto(pts: list[Point], front: list[Point], title: str, path: Path, metric: str = "latency_ms",
                metrics: tuple[str, ...] = ("accuracy", "latency_ms")) -> Path:
    """Accuracy against one hardware ``metric``; ``front`` (chosen on ``metrics``) marked, as a line where it is
    this metric's own two-objective front, as points where it is a front of more objectives projected here."""
    pts = [p for p in pts if not math.isnan(p.value(metric))]
    front = sorted((p for p in front if not math.isnan(p.value(metric))), key=lambda p: p.value(metric))
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.scatter([p.value(metric) for p in pts], [p.accuracy for p in pts], s=18, color="0.7", label="trials (search)")
    projected = len(metrics) > 2 or metric not in metrics
    ax.plot([p.value(metric) for p in front], [p.accuracy for p in front], "o" if projected else "o-",
            color="tab:red", ms=5, label=f"Pareto front on {', '.join(metrics)} (search)")
    tested = [p for p in front if not math.isnan(p.test_accuracy)]
    if tested:
        ax.errorbar([p.value(metric) for p in tested], [p.test_accuracy for p in tested],
                    yerr=[p.test_se for p in tested], fmt="D", mfc="none", color="tab:green", ms=5, capsize=2,
                    label="front on test (± 1 SE)")
    markers = {"dense": ("s", "black", "all dense"), "paper": ("^", "tab:blue", "paper allocation")}
    for p in pts:
        if p.reference in markers:
            marker, color, text = markers[p.reference]
            ax.scatter([p.value(metric)], [p.accuracy], marker=marker, s=70, color=color, label=text, zorder=3)
    ax.set_xlabel(METRIC_LABELS[metric])
    ax.set_ylabel(accuracy_label(pts))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _energy_text(p: Point) -> str:
    return "" if math.isnan(p.energy_uj) else f", {p.energy_uj:.1f} µJ"


def plot_allocation(front: list[Point], path: Path) -> Path:
    """One row per Pareto config (fastest at the top), one column per block, a panel per decision."""
    depth = front[0].config.depth
    keys = block_options()
    fig, axes = plt.subplots(1, len(keys), figsize=(3.0 * len(keys), 0.9 + 0.35 * len(front)),
                             squeeze=False)
    for ax, (key, options) in zip(axes[0], keys.items()):
        grid = np.array([[options.index(getattr(b, key)) for b in p.config.blocks] for p in front])
        ax.imshow(grid, cmap=plt.get_cmap("Set2", len(options)), vmin=-0.5, vmax=len(options) - 0.5,
                  aspect="auto")
        for r in range(grid.shape[0]):
            for c in range(grid.shape[1]):
                ax.text(c, r, options[grid[r, c]][:5], ha="center", va="center", fontsize=7)
        ax.set_title(key, fontsize=9)
        ax.set_xticks(range(depth), [str(i) for i in range(depth)], fontsize=7)
        ax.set_xlabel("block", fontsize=8)
        labels = [f"{p.label} ({p.latency_ms:.2f} ms{_energy_text(p)}, test {p.test_accuracy:.3f})" for p in front]
        ax.set_yticks(range(len(front)), labels if ax is axes[0][0] else [], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_pays(pays: "WhereItPays", title: str, path: Path) -> Path:
    """Where each choice pays: one panel per slot, a group of bars per set of alike blocks, one bar per choice at
    its priced time over dense's (log scale; the line at 1.0 is dense)."""
    slots = [s for s in SLOTS if any(r.slot == s for r in pays.ratios)]
    wheres = list(dict.fromkeys(r.where for r in pays.ratios))
    fig, axes = plt.subplots(1, len(slots), figsize=(3.2 * len(slots), 3.6), squeeze=False, sharey=True)
    for ax, slot in zip(axes[0], slots):
        rows = [r for r in pays.ratios if r.slot == slot]
        choices = list(dict.fromkeys(r.choice for r in rows))
        width = 0.8 / len(choices)
        for c, choice in enumerate(choices):
            xs, ys = [], []
            for w, where in enumerate(wheres):
                for r in rows:
                    if r.where == where and r.choice == choice:
                        xs.append(w - 0.4 + width * (c + 0.5))
                        ys.append(r.ratio)
            ax.bar(xs, ys, width, label=choice)
            for x, y in zip(xs, ys):
                ax.text(x, y, f"{y:.2f}", ha="center", va="bottom", fontsize=6)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_yscale("log")
        ax.set_title(slot, fontsize=9)
        ax.set_xticks(range(len(wheres)), [w.replace(" (", "\n(") for w in wheres], fontsize=6)
        ax.legend(fontsize=6, loc="upper right")
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("priced time / dense (below 1: pays)", fontsize=8)
    fig.suptitle(f"{title}\nwhere each choice pays, batch {pays.batch}: each alone in a dense block", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@dataclass
class Report:
    points: list[Point]
    front: list[Point]
    files: list[Path]
    metrics: tuple[str, ...] = ("accuracy", "latency_ms")  # what the front is chosen on
    untested: str = ""  # why the front's test accuracy could not be evaluated (supernet mode without its supernet)
    # a refined study's refined points and front (nas.search.refined.Refined), and its proxy's Trust (else None)
    refined: list = field(default_factory=list)
    refined_front: list = field(default_factory=list)
    trust: object = None
    energy_note: str = ENERGY_NOTES[DEFAULT_ENERGY_MODEL]  # what the energy figures are, by the study's energy model


def report(ostudy: optuna.Study, out: Path, title: str, pays: "WhereItPays | None" = None) -> Report:
    """``trials.csv``, a Pareto plot per hardware metric, the front's allocation chart and, given the study's
    :class:`~latency_model.pays.WhereItPays`, ``pays.png``."""
    out.mkdir(parents=True, exist_ok=True)
    pts = points(ostudy)
    metrics = front_metrics(ostudy)
    front = pareto_front(pts, metrics)
    files = [write_csv(pts, front, out / "trials.csv")]
    if pts:
        for metric, name in PLOT_FILES.items():
            if any(not math.isnan(p.value(metric)) for p in pts):
                files.append(plot_pareto(pts, front, title, out / name, metric, metrics))
        if front:
            files.append(plot_allocation(front, out / "allocation.png"))
    if pays is not None and pays.ratios:
        files.append(plot_pays(pays, title, out / "pays.png"))
    model = (ostudy.user_attrs.get(attr.STUDY_ENERGY_TABLE) or {}).get("model", DEFAULT_ENERGY_MODEL)
    return Report(pts, front, files, metrics, energy_note=ENERGY_NOTES.get(model, ENERGY_NOTES[DEFAULT_ENERGY_MODEL]))
