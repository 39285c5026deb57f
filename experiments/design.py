"""``etree design``: the tree the E-Tree paper calls "optimally designed", searched for a given fleet.

``etree design SPEC [--protocol LABEL] [--objective time|bytes|accuracy] [--target ACC]
[--budget N|Nr] [--seed S] [--out DIR]`` searches the design space of the spec's ``etree``
protocol (:mod:`experiments.design_space`) for the tree that reaches a validation accuracy
soonest in simulated time (``time``), with the fewest bytes (``bytes``), or holds the best
validation accuracy at a fixed simulated time (``accuracy``). Every score is the
``validation_accuracy`` of the models devices hold (the split carved from the training data);
the test set is read only for the final report (DESIGN: fair comparisons).

How the budget is spent:

1. FedAvg, HierFAVG and the paper's tree (K = 8, ratios [1, 5]) run the spec's rounds on the
   spec's workload; the target, unless ``--target`` gives it, is 90% of the best final
   validation accuracy among them (as ``summary.md`` sets its target). The accuracy objective's
   fixed time is FedAvg's simulated time over the spec's rounds.
2. optuna proposes designs (TPE, seeded; the paper's tree is the first trial). Each design's
   round times and bytes are computed exactly, without training (:mod:`experiments.design_timing`),
   and a design that cannot win is discarded untrained: one whose simulated time (bytes) after as
   many rounds as the fastest-learning run so far needed to reach the target already exceeds the
   best design's time (bytes) to target.
3. The rest train, evaluated every round: a trial stops as soon as it reaches the target
   (time-to-target is then known), or once it has spent more simulated time (bytes) than the best
   design did to reach it, or after twice the spec's rounds; successive halving compares trials
   at equal simulated time (bytes) and stops the worse two thirds at each rung.
4. The best design is run over the spec's rounds for the final report.

``--budget N`` is N trained trials (designs discarded by timing or repeated cost nothing);
``--budget Nr`` is N training rounds in total, the baselines and the final report included.
Written into ``--out``: ``designed.toml`` (the spec with the designed protocol added, ready for
``etree run``), ``design.md`` and ``design.png`` (:mod:`experiments.design_report`).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import tomli_w

from etree.engine.loop import run_protocol
from etree.engine.workload import Workload
from etree.protocols import make_protocol
from experiments.design_report import Baseline, Curve, Found, Point, Trial, design_markdown, write_pareto
from experiments.design_space import MIN_DEVICES, SEARCHED, Design, paper_design, paper_params, suggest_design
from experiments.design_timing import CostPredictor, PretrainCache
from experiments.run_folder import atomic_write_text, prepare_target, write_marker
from experiments.runner import build_workload, protocol_workload
from experiments.spec import ProtocolSpec, Spec, SpecError, apply_overrides, load_spec, raw_spec, spec_from_dict
from experiments.summary import TARGET_FRACTION

OBJECTIVES = ("time", "bytes", "accuracy")
AXIS = {"time": "sim_time_s", "bytes": "bytes_sent", "accuracy": "sim_time_s"}
TREE_PROTOCOLS = ("etree",)  # the protocol whose options design_space searches
ROUND_CAP = 2  # a trial trains at most this many times the spec's rounds
RUNG_UNITS = 27  # successive-halving steps per reference cost (the best baseline's cost to target)
MIN_RESOURCE = 9  # first rung: a third of the reference cost; then all of it, then three times it
REDUCTION = 3  # successive halving keeps the best third at each rung
FILES = ("designed.toml", "design.md", "design.png")
DoneCallback = Callable[[str, int, int], None]
Walked = tuple[bool, str, float | None, Curve]  # complete, why it stopped, value, the rounds it ran


@dataclass(frozen=True)
class Budget:
    """``--budget``: trained trials, or training rounds in total."""

    trials: int | None = None
    rounds: int | None = None

    def text(self) -> str:
        return f"{self.trials} trained trials" if self.trials is not None else f"{self.rounds} training rounds in total"


def parse_budget(text: str) -> Budget:
    """``20`` (trained trials) or ``600r`` (training rounds in total)."""
    value = str(text).strip().lower()
    rounds = value.endswith("r")
    digits = value[:-1] if rounds else value
    if not digits.isdigit() or int(digits) < 1:
        raise SpecError(f"--budget: got {text!r}; give trained trials (e.g. 20) or training rounds with r (e.g. 600r)")
    return Budget(rounds=int(digits)) if rounds else Budget(trials=int(digits))


def design(
    spec_path: Path,
    out: Path,
    *,
    protocol: str | None = None,
    objective: str = "time",
    target: float | None = None,
    budget: str = "20",
    seed: int | None = None,
    overrides: Sequence[str] = (),
    on_done: DoneCallback | None = None,
) -> Path:
    """Search a tree for ``spec_path``'s fleet and write ``designed.toml``, ``design.md`` and
    ``design.png`` into ``out`` (see the module docstring). Every input is checked before a run."""
    if objective not in OBJECTIVES:
        raise SpecError(f"--objective: got {objective!r}; choose one of: {', '.join(OBJECTIVES)}")
    plan = parse_budget(budget)
    if target is not None and objective == "accuracy":
        raise SpecError("--target: the accuracy objective has no target (it scores accuracy at a fixed time); drop it")
    if target is not None and not (math.isfinite(target) and 0 < target <= 1):
        raise SpecError(f"--target: got {target}; give a validation accuracy in (0, 1]")
    if seed is not None and seed < 0:
        raise SpecError(f"--seed: got {seed}; must be >= 0")
    spec = load_spec(spec_path, overrides)
    entry = tree_entry(spec, protocol)
    make_protocol(entry.name, entry.label, dict(entry.options))  # its fixed options are checked before any run
    if spec.data.validation_fraction <= 0:
        raise SpecError("data.validation_fraction: design scores the validation split; set it > 0 (default 0.1)")
    if spec.topology.devices < MIN_DEVICES:
        raise SpecError(f"topology.devices: got {spec.topology.devices}; designing a tree needs >= {MIN_DEVICES}")
    if plan.rounds is not None and plan.rounds <= 4 * spec.rounds:
        raise SpecError(
            f"--budget: {plan.rounds}r leaves no round for a trial: the three baselines and the final report "
            f"take {4 * spec.rounds}; give more than that, or a number of trials"
        )
    folder = prepare_target(out, "--out", kinds=("design",))
    workload, _, _ = build_workload(spec)
    workload = dataclasses.replace(workload, trainer=PretrainCache(workload.trainer))
    try:
        if workload.recommender:
            raise SpecError("data.dataset: etree design scores validation accuracy; a recommender workload has none")
        search = _Search(spec, entry, workload, objective, target, plan, on_done)
        found = search.run(spec.seed if seed is None else seed)
    finally:
        workload.trainer.close()
    designed, report = designed_spec(spec_path, overrides, spec, entry, found), design_markdown(found)
    folder.mkdir(parents=True, exist_ok=True)
    write_marker(folder, "design", FILES)  # first: a folder left half-written is still one etree may replace
    atomic_write_text(folder / "designed.toml", designed)
    atomic_write_text(folder / "design.md", report)
    write_pareto(found, folder / "design.png")
    write_marker(folder, "design", FILES)  # again, now that the files it lists exist
    return folder


def tree_entry(spec: Spec, label: str | None) -> ProtocolSpec:
    """The protocol to design: ``label``'s, or the spec's first ``etree`` protocol."""
    names = ", ".join(TREE_PROTOCOLS)
    if label is None:
        found = next((p for p in spec.protocols if p.name in TREE_PROTOCOLS), None)
        if found is None:
            raise SpecError(f'protocols: no {names} protocol to design; add [[protocols]] name = "etree"')
        return found
    chosen = next((p for p in spec.protocols if p.label == label), None)
    if chosen is None:
        labels = ", ".join(p.label for p in spec.protocols)
        raise SpecError(f"--protocol: no protocol labelled {label!r}; the spec has: {labels}")
    if chosen.name not in TREE_PROTOCOLS:
        raise SpecError(f"--protocol: {label!r} is a {chosen.name} protocol, not a tree etree design shapes ({names})")
    return chosen


def design_entry(entry: ProtocolSpec, design: Design, label: str) -> ProtocolSpec:
    """``entry`` with ``design``'s options; its other options and its ``train`` values kept."""
    fixed = {k: v for k, v in entry.options.items() if k not in SEARCHED}
    return ProtocolSpec(entry.name, label, {**fixed, **design.options()}, dict(entry.train))


def entry_design(entry: ProtocolSpec) -> Design:
    """The design an ``etree`` entry has (the protocol's defaults where it sets nothing)."""
    base = paper_design(10**6)  # the protocol's defaults: groups [8, 1], ratios [1, 5]
    options = {k: v for k, v in entry.options.items() if k in SEARCHED}
    values = dataclasses.asdict(base) | options
    return Design(
        groups=tuple(values["groups"]),
        ratios=tuple(values["ratios"]),
        clustering=values["clustering"],
        delta=float(values["delta"]),
        weighted=values["weighted"],
        participation=float(values["participation"]),
        public_nodes=values["public_nodes"],
        gamma=float(values["gamma"]),
    )


class _Search:
    """One design search on one workload: the baselines, the optuna study, the final report."""

    def __init__(
        self,
        spec: Spec,
        entry: ProtocolSpec,
        workload: Workload,
        objective: str,
        target: float | None,
        plan: Budget,
        on_done: DoneCallback | None,
    ) -> None:
        self.spec, self.entry, self.workload = spec, entry, workload
        self.objective, self.axis, self.plan = objective, AXIS[objective], plan
        self.target = target
        self.on_done = on_done
        self.cap = ROUND_CAP * spec.rounds
        self.used = {"baselines": 0, "trials": 0, "final report": 0}
        self.full: dict[Design, Curve] = {}  # designs run over the spec's rounds (the paper's tree)
        self.outcomes: dict[Design, Trial] = {}  # first trial of each design
        self.trials: list[Trial] = []
        self.trained = 0
        self.best = math.inf  # the best tree's cost to target (time, bytes objectives)
        self.fewest_rounds = math.inf  # the fewest rounds any trained run needed to reach the target
        self.at_time = math.nan  # the accuracy objective's fixed simulated time (set by the baselines)
        self.unit = math.nan  # simulated seconds (bytes) per successive-halving step (set by the baselines)

    # -- the whole search ----------------------------------------------------
    def run(self, seed: int) -> Found:
        baselines = self._baselines()
        finals = [b.curve.final.validation for b in baselines]
        if self.target is None:
            self.target = TARGET_FRACTION * max(finals)
            note = f"{TARGET_FRACTION:.0%} of the best final validation accuracy of the baselines, {max(finals):.4f}"
        else:
            note = "given by --target"
        self.at_time = baselines[0].curve.final.sim_time_s  # the accuracy objective's fixed time: FedAvg's
        reached = [hit for b in baselines if (hit := b.curve.reaching(self.target))]
        for hit in reached:
            self.fewest_rounds = min(self.fewest_rounds, hit.round)
        if self.objective == "accuracy":
            reference = self.at_time
        elif reached:
            reference = min(hit.spent(self.axis) for hit in reached)
        else:
            reference = max(b.curve.final.spent(self.axis) for b in baselines)
        self.unit = max(reference, 1e-12) / RUNG_UNITS
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            with warnings.catch_warnings():  # TPE's group option (conditional spaces) is marked experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study = optuna.create_study(
                    direction="maximize" if self.objective == "accuracy" else "minimize",
                    sampler=optuna.samplers.TPESampler(
                        seed=seed, multivariate=True, group=True, n_startup_trials=self._startup()
                    ),
                    pruner=optuna.pruners.SuccessiveHalvingPruner(
                        min_resource=MIN_RESOURCE, reduction_factor=REDUCTION
                    ),
                )
                study.enqueue_trial(paper_params(self.spec.topology.devices))
                study.optimize(self._objective, n_trials=self._trial_limit(), callbacks=[self._stop_when_spent])
        finally:
            optuna.logging.set_verbosity(verbosity)
        best = self._best()
        final = None if best is None else self._final(best)
        return Found(
            spec_name=self.spec.name,
            objective=self.objective,
            target=self.target,
            target_note=note,
            at_time_s=self.at_time if self.objective == "accuracy" else None,
            seed=seed,
            budget=self.plan.text(),
            rounds=dict(self.used),
            rounds_per_run=self.spec.rounds,
            search=self._search_text(),
            label=designed_label(self.spec, self.entry),
            baselines=tuple(baselines),
            trials=tuple(self.trials),
            best=best,
            final=final,
        )

    def _startup(self) -> int:
        """Random trials before TPE models the space: a third of the trial budget, 3 to 10."""
        trials = self.plan.trials if self.plan.trials is not None else self._round_trials()
        return max(3, min(10, trials // 3))

    def _round_trials(self) -> int:
        """About how many trials a round budget pays for (a trial stops at the target: half a spec's rounds)."""
        assert self.plan.rounds is not None
        return max(1, 2 * (self.plan.rounds - 4 * self.spec.rounds) // self.spec.rounds)

    def _trial_limit(self) -> int:
        """Trials optuna may ask for, trained or not (designs discarded by timing cost nothing)."""
        trials = self.plan.trials if self.plan.trials is not None else self._round_trials()
        return max(20, 10 * trials)

    def _stop_when_spent(self, study: optuna.Study, _: optuna.trial.FrozenTrial) -> None:
        if self._left() <= 0 or (self.plan.trials is not None and self.trained >= self.plan.trials):
            study.stop()

    def _left(self) -> int:
        """Rounds the trials may still train (a round budget pays for the baselines and the final report too)."""
        if self.plan.rounds is None:
            return self.cap
        return self.plan.rounds - self.used["baselines"] - self.used["trials"] - self.spec.rounds

    def _search_text(self) -> str:
        axis = "simulated time" if self.axis == "sim_time_s" else "bytes"
        text = (
            f"Search: optuna {optuna.__version__} TPE (multivariate, grouped), the paper's tree as the first trial; "
            f"successive halving at equal {axis} (rungs at 1/3, 1, 3, ... times "
        )
        if self.objective == "accuracy":
            return text + "the fixed time; the best third go on); a trial trains until the fixed time."
        return text + (
            f"the best baseline's {axis} to target; the best third go on). Discarded untrained: a design whose "
            f"predicted {axis} after the fewest rounds any run needed exceeds the best design's; a trial stops at "
            f"the target, past the best design's {axis} to target, or after {self.cap} rounds."
        )

    # -- runs ----------------------------------------------------------------
    def _baselines(self) -> list[Baseline]:
        """FedAvg, HierFAVG and the paper's tree over the spec's rounds."""
        fedavg = next((p for p in self.spec.protocols if p.name == "fedavg"), ProtocolSpec("fedavg", "fedavg"))
        hierfavg = next((p for p in self.spec.protocols if p.name == "hierfavg"), ProtocolSpec("hierfavg", "hierfavg"))
        paper = paper_design(self.spec.topology.devices)
        tree = design_entry(self.entry, paper, paper_label(self.spec, self.entry))
        out = []
        for name, entry in (("FedAvg", fedavg), ("HierFAVG", hierfavg), ("paper's tree", tree)):
            out.append(Baseline(name, entry.label, Curve(tuple(self._points(entry, self.spec.rounds, "baselines")))))
            self._progress(f"baseline {name}")
        self.full[paper] = out[-1].curve
        return out

    def _points(self, entry: ProtocolSpec, rounds: int, spend: str) -> Iterator[Point]:
        """Train ``entry`` for up to ``rounds`` rounds, yielding every round's held-model accuracies
        (round 0 included) and counting each trained round under ``spend``; the caller may stop early."""
        protocol = make_protocol(entry.name, entry.label, dict(entry.options))
        test, test_round = math.nan, -1
        for record in run_protocol(protocol, protocol_workload(self.workload, entry), rounds=rounds, eval_every=1):
            if record.metric == "accuracy":  # rows of a round come sorted: accuracy before validation_accuracy
                test, test_round = record.value, record.round
            elif record.metric == "validation_accuracy":
                assert test_round == record.round, "every evaluation reports accuracy and validation_accuracy"
                self.used[spend] += int(record.round > 0)
                yield Point(record.round, record.sim_time_s, record.bytes_sent, record.value, test)

    def _trial_points(self, design: Design, rounds: int) -> Iterator[Point]:
        """A trial's rounds: those of the design's run over the spec's rounds where there is one (the
        paper's tree), then trained afresh past them (training is deterministic: the same rounds again)."""
        last = -1
        for point in self.full[design].points[: rounds + 1] if design in self.full else ():
            last = point.round
            yield point
        if last < rounds:
            yield from (p for p in self._points(self._entry(design), rounds, "trials") if p.round > last)

    def _final(self, best: Trial) -> Curve:
        """The chosen design over the spec's rounds (a design already run that long is not rerun)."""
        if best.design in self.full:
            return self.full[best.design]
        entry = design_entry(self.entry, best.design, designed_label(self.spec, self.entry))
        curve = Curve(tuple(self._points(entry, self.spec.rounds, "final report")))
        self._progress("final report")
        return curve

    def _progress(self, what: str) -> None:
        """Trained trials of the budget, or rounds of it."""
        if self.on_done is None:
            return
        if self.plan.trials is not None:
            self.on_done(what, min(self.trained, self.plan.trials), self.plan.trials)
        else:
            assert self.plan.rounds is not None
            self.on_done(what, min(sum(self.used.values()), self.plan.rounds), self.plan.rounds)

    # -- one trial -----------------------------------------------------------
    def _objective(self, trial: optuna.Trial) -> float:
        design = suggest_design(trial, self.spec.topology.devices)
        if design in self.outcomes:  # a design tried before: the same outcome, nothing trained
            first = self.outcomes[design]
            self._keep(dataclasses.replace(first, number=trial.number, how=f"repeat of #{first.number}"))
            return self._result(first)
        predictor = CostPredictor(self._entry(design), self.workload)
        note = self._cannot_win(predictor)
        if note:
            costs = predictor.costs()
            return self._result(self._keep(Trial(trial.number, design, False, "timing only", note, None, costs, None)))
        rounds = self._rounds(predictor)
        before = self.used["trials"]
        complete, note, value, curve = self._walk(trial, self._trial_points(design, rounds), rounds)
        costs = predictor.extend(curve.final.round)  # predicted over the rounds it ran, for the report
        trained = self.used["trials"] > before
        if trained:
            self.trained += 1
            self._progress(f"trial {trial.number}")
        how = "trained" if trained else "baseline run"
        return self._result(self._keep(Trial(trial.number, design, complete, how, note, value, costs, curve)))

    def _entry(self, design: Design) -> ProtocolSpec:
        return design_entry(self.entry, design, self.entry.label)

    def _cannot_win(self, predictor: CostPredictor) -> str:
        """Why timing alone rules a design out ("" when it does not), timing only the rounds that tells."""
        if self.objective == "accuracy":
            first = float(predictor.extend(1).sim_time_s[1])
            return "" if first <= self.at_time else f"its first round ends at {first:.4g} s, after {self.at_time:.4g} s"
        if not (math.isfinite(self.fewest_rounds) and math.isfinite(self.best)):
            return ""
        fewest = min(int(self.fewest_rounds), self.cap)
        costs = predictor.extend(fewest)
        spent = float((costs.sim_time_s if self.axis == "sim_time_s" else costs.bytes_sent)[fewest])
        if spent <= self.best:
            return ""
        unit = "s" if self.axis == "sim_time_s" else "bytes"
        return (
            f"predicted {spent:.4g} {unit} after {fewest} rounds (the fewest any run needed) "
            f"> the best design's {self.best:.4g} {unit}"
        )

    def _rounds(self, predictor: CostPredictor) -> int:
        """Rounds a trial may train: the cap (or, for the accuracy objective, the rounds that fit in the
        fixed time), within what the budget has left."""
        rounds = self.cap
        if self.objective == "accuracy":
            times = predictor.extend_past(self.at_time, self.cap).sim_time_s
            rounds = int((times <= self.at_time * (1 + 1e-12)).sum()) - 1
        return max(1, min(rounds, self._left()))

    def _walk(self, trial: optuna.Trial, points: Iterator[Point], rounds: int) -> Walked:
        """Follow a run round by round, reporting to the pruner at equal cost; stop as the module says.
        Returns whether the trial is complete, why it stopped, its value, and the rounds it ran."""
        assert self.target is not None
        seen: list[Point] = []
        step, held = 1, math.nan
        minimise = self.objective != "accuracy"
        for point in points:
            seen.append(point)
            spent = point.spent(self.axis)
            if minimise and point.validation >= self.target:
                return True, f"reached the target in {point.round} rounds", spent, Curve(tuple(seen))
            if minimise and spent > self.best:
                return False, "spent more than the best design did to reach the target", None, Curve(tuple(seen))
            reported = False
            while step * self.unit < spent:  # the cost passed rung step: report what was held there
                trial.report(1.0 - held if minimise else held, step)
                step, reported = step + 1, True
            held = point.validation
            if reported and trial.should_prune():
                return False, f"halved at {point.round} rounds", None, Curve(tuple(seen))
            if point.round >= rounds:
                break
        if not minimise:
            return True, f"trained {seen[-1].round} rounds, to the fixed time", seen[-1].validation, Curve(tuple(seen))
        return False, f"did not reach the target in {seen[-1].round} rounds", None, Curve(tuple(seen))

    def _keep(self, outcome: Trial) -> Trial:
        self.trials.append(outcome)
        self.outcomes.setdefault(outcome.design, outcome)
        hit = outcome.reach(self.target) if self.target is not None else None
        if hit is not None:
            self.fewest_rounds = min(self.fewest_rounds, hit.round)
        if outcome.complete and outcome.value is not None and self.objective != "accuracy":
            self.best = min(self.best, outcome.value)
        return outcome

    def _result(self, outcome: Trial) -> float:
        if not outcome.complete or outcome.value is None:
            raise optuna.TrialPruned(outcome.note)
        return outcome.value

    def _best(self) -> Trial | None:
        """The best complete trial (ties: the earlier); when none is complete (no design reached the
        target), the trained one whose devices held the highest validation accuracy."""
        done = [t for t in self.trials if t.complete and t.value is not None]
        if done:
            sign = -1.0 if self.objective == "accuracy" else 1.0
            return min(done, key=lambda t: (sign * (t.value or 0.0), t.number))
        tried = [(max(p.validation for p in t.curve.points), -t.number, t) for t in self.trials if t.curve is not None]
        return max(tried, key=lambda row: row[:2])[2] if tried else None


# -- the designed spec ---------------------------------------------------------
def _unique(label: str, taken: set[str]) -> str:
    name, k = label, 2
    while name in taken:
        name, k = f"{label}-{k}", k + 1
    return name


def designed_label(spec: Spec, entry: ProtocolSpec) -> str:
    return _unique(f"{entry.label}-designed", {p.label for p in spec.protocols})


def paper_label(spec: Spec, entry: ProtocolSpec) -> str:
    """The paper's tree's label: the designed entry's own when it is the paper's tree, else ``<label>-paper``."""
    if entry_design(entry) == paper_design(spec.topology.devices):
        return entry.label
    return _unique(f"{entry.label}-paper", {p.label for p in spec.protocols} | {designed_label(spec, entry)})


def designed_spec(spec_path: Path, overrides: Sequence[str], spec: Spec, entry: ProtocolSpec, found: Found) -> str:
    """``designed.toml``: SPEC (with the ``--set`` overrides the design was made for, without its
    ``[sweep]``), the designed protocol beside the one it was designed from, and whichever of
    FedAvg, HierFAVG and the paper's tree it lacks; checked to load before it is written."""
    raw = apply_overrides(raw_spec(Path(spec_path)), overrides)
    raw.pop("sweep", None)
    raw["name"] = f"{spec.name}_designed"
    tables: list[dict[str, Any]] = list(raw.get("protocols", []))
    names = {table.get("name") for table in tables}
    labels = {table.get("label", table.get("name")) for table in tables}
    for baseline in found.baselines:
        if baseline.label in labels or (baseline.name != "paper's tree" and baseline.name.lower() in names):
            continue
        if baseline.name == "paper's tree":
            tables.append(_table(design_entry(entry, paper_design(spec.topology.devices), baseline.label)))
        else:
            tables.append({"name": baseline.name.lower()})
    if found.best is not None:
        at = next(i for i, t in enumerate(tables) if t.get("label", t.get("name")) == entry.label)
        tables.insert(at + 1, _table(design_entry(entry, found.best.design, found.label)))
    raw["protocols"] = tables
    spec_from_dict(raw)  # the designed spec loads, or the design fails here, not in `etree run`
    chosen = "no design reached the target" if found.best is None else found.best.design.text()
    header = (
        f"# Designed by `etree design` ({found.objective} objective, {found.budget}, search seed {found.seed}):\n"
        f"# {found.label}: {chosen}. See design.md beside this file.\n"
    )
    return header + tomli_w.dumps(raw)


def _table(entry: ProtocolSpec) -> dict[str, Any]:
    table: dict[str, Any] = {"name": entry.name, "label": entry.label, **entry.options}
    if entry.train:
        table["train"] = dict(entry.train)
    return table
