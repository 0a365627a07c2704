"""Training an unlabelled detector: window features, injected validation anomalies, Optuna, threshold, save.

A detector without a `[label]` but with `[anomaly]` trains here (`tickguard train --detector waterflow`
dispatches to `train_unsupervised`). The protocol, also the benchmark's (benchmarks/unsupervised.py):

1. Each series (per the detector's `group_by` tags) is cut in time: the first 40% trains, the next 20%
   validates, the last 40% is the holdout. Window features come from tickguard.windows, the code the
   agent runs live, over the whole series in time order (a window looks back only).
2. The model is fit on the clean training rows (points past warming up). Nothing labels them: the model
   learns what ordinary looks like. Real anomalies far outside anything injected (waterflow's outages;
   tickguard.data.inject.natural_anomalies) and the windows they spoil are left out of training and of
   every score that is counted.
3. Validation labels: the detector's data has none, so copies of each series get anomalies injected into
   the validation part (tickguard.data.inject, every kind that applies, seeds 1000+). Optuna picks the
   model kind (when `model = "auto"`) and its parameters by the mean AUPRC over kinds on those copies.
4. The threshold is the declared share (`declared_threshold`): `contamination` = the (1 - c) quantile of
   the scores of the clean history (training and validation rows); `alert_rate` = the (1 - r) quantile of
   the clean validation rows' scores.
5. The holdout copies (other seeds, anomalies in the last 40%) are scored once, for the card's report.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tickguard import modelstore
from tickguard.anomaly import MODELS, IsolationForestModel, RobustResidualModel, threshold_for_share
from tickguard.data.inject import KINDS, SEASONAL_KINDS, InjectionError, inject, natural_anomalies
from tickguard.detectors import DetectorSpec
from tickguard.errors import TickguardError
from tickguard.training.series_metrics import event_metrics
from tickguard.training.train import library_versions
from tickguard.windows import OK, WindowFeatures, features_for_frame

log = logging.getLogger(__name__)

TRAIN_SHARE, VALID_SHARE = 0.4, 0.2  # the rest (40%) is the holdout
VALID_SEEDS = (1000, 1001, 1002)
HOLDOUT_SEEDS = (0, 1, 2, 3, 4)
WEIGHT_KINDS = ("level", "season", "step", "flat", "burst")


class UnsupervisedTrainingError(TickguardError):
    """An unlabelled detector cannot be trained (no [anomaly], too few points, no usable windows)."""


@dataclass
class SeriesCase:
    """One series: its key (tag values), times (int ns) and one field's values, time-ordered."""

    key: tuple[str, ...]
    times: np.ndarray
    values: np.ndarray

    @property
    def cuts(self) -> tuple[int, int]:
        """(end of training, end of validation) in points."""
        n = len(self.values)
        return int(TRAIN_SHARE * n), int((TRAIN_SHARE + VALID_SHARE) * n)


def cases_from_frame(frame: pd.DataFrame, spec: DetectorSpec, time_column: str = "time") -> list[SeriesCase]:
    """Split a long frame (time ns, group_by tags, the detector's first field) into time-ordered series."""
    field_name = spec.feature_fields[0]
    tags = [t for t in spec.windows.group_by if t in frame.columns]
    groups = frame.groupby(tags, sort=True) if tags else [((), frame)]
    cases = []
    for key, part in groups:
        part = part.sort_values(time_column, kind="stable")
        key = key if isinstance(key, tuple) else (key,)
        full_key = tuple(str(key[tags.index(t)]) if t in tags else "" for t in spec.windows.group_by)
        cases.append(
            SeriesCase(
                full_key,
                part[time_column].to_numpy(dtype=np.int64),
                part[field_name].to_numpy(dtype=np.float64),
            )
        )
    return cases


def window_matrix(
    spec: DetectorSpec, case: SeriesCase, values: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(X, ok) of a series (or of `values` at its times, e.g. an injected copy), through tickguard.windows."""
    values = case.values if values is None else values
    frame = pd.DataFrame({"time": case.times, spec.feature_fields[0]: values})
    for tag, value in zip(spec.windows.group_by, case.key, strict=True):
        frame[tag] = value
    out = features_for_frame(frame, spec, features=WindowFeatures.from_spec(spec))
    return out[list(spec.model_columns)].to_numpy(dtype=np.float64), (out["status"] == OK).to_numpy()


def kinds_for(period: int | None) -> tuple[str, ...]:
    """The anomaly kinds that apply to a series (a seasonal break needs a season)."""
    return tuple(k for k in KINDS if period or k not in SEASONAL_KINDS)


def inject_fitting(values: np.ndarray, kind: str, seed: int, period: int | None, region: tuple[int, int]):
    """inject() with up to 3 segments, fewer when the region is too short for 3, and one segment capped at
    the region's length as the last resort."""
    for count in (3, 2, 1):
        try:
            return inject(values, kind, seed, period=period, count=count, region=region)
        except InjectionError:
            continue
    try:
        return inject(
            values, kind, seed, period=period, count=1, region=region, max_length=region[1] - region[0]
        )
    except InjectionError:
        raise UnsupervisedTrainingError(f"region {region} is too short for even one {kind} anomaly") from None


@dataclass
class Copy:
    """An injected copy of a series, with its window features and the rows to score."""

    kind: str
    seed: int
    values: np.ndarray  # the injected series
    X: np.ndarray
    ok: np.ndarray
    labels: np.ndarray
    rows: np.ndarray  # indices scored (the region, ok rows)


@dataclass
class Prepared:
    """A series with its clean features, training rows and injected validation/holdout copies."""

    case: SeriesCase
    X: np.ndarray
    ok: np.ndarray
    train_rows: np.ndarray
    valid_rows: np.ndarray
    valid: list[Copy] = field(default_factory=list)
    holdout: list[Copy] = field(default_factory=list)


def prepare(
    spec: DetectorSpec,
    case: SeriesCase,
    period: int | None,
    valid_seeds: Sequence[int] = VALID_SEEDS,
    holdout_seeds: Sequence[int] = HOLDOUT_SEEDS,
    kinds: Sequence[str] | None = None,
) -> Prepared:
    """Features of the clean series and of every injected copy (computed once; tuning only refits)."""
    train_end, valid_end = case.cuts
    X, ok = window_matrix(spec, case)
    usable = ok & (natural_anomalies(case.values, period) == 0)
    index = np.arange(len(case.values))
    train_rows = index[(index < train_end) & usable]
    if len(train_rows) < 20:
        raise UnsupervisedTrainingError(
            f"series {case.key}: {len(train_rows)} training rows past warming up (of {train_end} points):"
            " too few to learn from; shorten the windows or give more history"
        )
    prepared = Prepared(
        case, X, usable, train_rows, index[(index >= train_end) & (index < valid_end) & usable]
    )
    kinds = kinds_for(period) if kinds is None else kinds
    for target, seeds, region in (
        (prepared.valid, valid_seeds, (train_end, valid_end)),
        (prepared.holdout, holdout_seeds, (valid_end, len(case.values))),
    ):
        for kind in kinds:
            for seed in seeds:
                injected = inject_fitting(case.values, kind, seed, period, region)
                Xc, okc = window_matrix(spec, case, injected.values)
                rows = index[(index >= region[0]) & (index < region[1]) & okc & usable]
                if injected.labels[rows].any():  # else every anomaly fell on a real one's marked points
                    target.append(Copy(kind, seed, injected.values, Xc, okc, injected.labels, rows))
    return prepared


def build_model(columns: Sequence[str], params: dict[str, Any], seed: int = 0):
    """A model from tuned parameters: {"model": kind, ...}."""
    if params["model"] == IsolationForestModel.kind:
        return IsolationForestModel(
            columns,
            n_estimators=int(params["n_estimators"]),
            max_samples=int(params["max_samples"]),
            seed=seed,
        )
    weights = {k: float(params[f"w_{k}"]) for k in WEIGHT_KINDS if f"w_{k}" in params}
    return RobustResidualModel(columns, weights=weights)


def score_copies(
    models: list, prepared: list[Prepared], which: str
) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """{kind: [(labels, scores) of each copy's scored rows]} for the `valid` or `holdout` copies."""
    out: dict[str, list] = {}
    for model, p in zip(models, prepared, strict=True):
        for copy in getattr(p, which):
            scores = model.score(copy.X[copy.rows])
            out.setdefault(copy.kind, []).append((copy.labels[copy.rows], scores))
    return out


def mean_auprc(scored: dict[str, list[tuple[np.ndarray, np.ndarray]]]) -> float:
    """Mean over kinds of the mean AUPRC over copies."""
    from sklearn.metrics import average_precision_score

    per_kind = [np.mean([average_precision_score(y, s) for y, s in pairs]) for pairs in scored.values()]
    return float(np.mean(per_kind))


def fit_pooled(spec: DetectorSpec, prepared: list[Prepared], params: dict[str, Any], seed: int = 0):
    """One model (one is served per detector) fit on every series' clean training rows, stacked."""
    stacked = np.vstack([p.X[p.train_rows] for p in prepared])
    return build_model(spec.model_columns, params, seed).fit(stacked)


def tune(
    spec: DetectorSpec, prepared: list[Prepared], n_trials: int, seed: int = 0, timeout_s: float | None = None
) -> tuple[dict[str, Any], Any]:
    """Optuna (TPE, seeded) over the model kind and its parameters; objective = validation mean AUPRC."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kinds = list(MODELS) if spec.anomaly.model == "auto" else [spec.anomaly.model]

    def objective(trial: optuna.Trial) -> float:
        params: dict[str, Any] = {"model": trial.suggest_categorical("model", kinds)}
        if params["model"] == IsolationForestModel.kind:
            params["n_estimators"] = trial.suggest_int("n_estimators", 100, 300, step=50)
            params["max_samples"] = trial.suggest_int("max_samples", 64, 512, log=True)
        else:
            for kind in WEIGHT_KINDS:
                params[f"w_{kind}"] = trial.suggest_float(f"w_{kind}", 0.25, 2.0, log=True)
        model = fit_pooled(spec, prepared, params, seed)
        return mean_auprc(score_copies([model] * len(prepared), prepared, "valid"))

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    # Start from the plain versions of both kinds, so a short study still compares them.
    for kind in kinds:
        if kind == IsolationForestModel.kind:
            study.enqueue_trial({"model": kind, "n_estimators": 200, "max_samples": 256})
        else:
            study.enqueue_trial({"model": kind, **{f"w_{k}": 1.0 for k in WEIGHT_KINDS}})
    study.optimize(objective, n_trials=n_trials, timeout=timeout_s)
    return dict(study.best_trial.params), study


def declared_threshold(spec: DetectorSpec, model, prepared: list[Prepared]) -> float:
    """The threshold the detector declares: `contamination` = that share of the clean history (training
    and validation parts, no injected copy) scores above it; `alert_rate` = that share of the clean
    validation part (the latest history)."""
    valid = np.vstack([p.X[p.valid_rows] for p in prepared])
    if spec.anomaly.contamination is not None:
        history = np.vstack([np.vstack([p.X[p.train_rows] for p in prepared]), valid])
        return threshold_for_share(model.score(history), spec.anomaly.contamination)
    return threshold_for_share(model.score(valid), spec.anomaly.alert_rate)


def holdout_report(models: list, thresholds: list[float], prepared: list[Prepared]) -> dict[str, dict]:
    """Per kind: mean AUPRC, point-adjusted F1, delay and false-alarm rate over the holdout copies."""
    per_kind: dict[str, list[dict]] = {}
    for model, threshold, p in zip(models, thresholds, prepared, strict=True):
        for copy in p.holdout:
            scores = model.score(copy.X[copy.rows])
            per_kind.setdefault(copy.kind, []).append(
                event_metrics(copy.labels[copy.rows], scores, threshold)
            )
    return {kind: summarize(items) for kind, items in per_kind.items()}


def summarize(items: list[dict]) -> dict[str, Any]:
    """Means over copies (delay: over copies that found an event), and the events found out of all."""
    delays = [m["delay_points"] for m in items if m["delay_points"] is not None]
    return {
        "auprc": round(float(np.mean([m["auprc"] for m in items])), 4),
        "pa_f1": round(float(np.mean([m["pa_f1"] for m in items])), 4),
        "delay_points": round(float(np.mean(delays)), 2) if delays else None,
        "events_found": int(sum(m["events_found"] for m in items)),
        "events": int(sum(m["events"] for m in items)),
        "false_alarm_rate": round(float(np.mean([m["false_alarm_rate"] for m in items])), 4),
        "copies": len(items),
    }


def train_unsupervised(
    spec: DetectorSpec,
    out_dir: Path,
    frame: pd.DataFrame,
    *,
    period: int | None,
    n_trials: int = 30,
    seed: int = 0,
    data_info: dict | None = None,
    timeout_s: float | None = None,
) -> dict:
    """Tune, fit and save the detector's model into `out_dir` (model.joblib + card); return the card.

    `frame` is long: an int ns `time` column, the group_by tags, the first feature field. One model is
    served per detector, so with several series the model is fit on the first series' training rows
    stacked with the others' (the evidence is scale-free within a series only when series are alike:
    group series of one kind under one detector)."""
    if spec.anomaly is None or spec.windows is None:
        raise UnsupervisedTrainingError(
            f"detector {spec.name}: unsupervised training needs [windows] and [anomaly]"
        )
    started = time.monotonic()
    cases = cases_from_frame(frame, spec)
    prepared = [prepare(spec, case, period) for case in cases]
    params, study = tune(spec, prepared, n_trials, seed, timeout_s)
    log.info("best validation mean AUPRC %.4f with %s", study.best_value, params)
    stacked = np.vstack([p.X[p.train_rows] for p in prepared])
    model = fit_pooled(spec, prepared, params, seed)
    threshold = declared_threshold(spec, model, prepared)
    validation = score_copies([model] * len(prepared), prepared, "valid")
    holdout = holdout_report([model] * len(prepared), [threshold] * len(prepared), prepared)
    out_dir.mkdir(parents=True, exist_ok=True)
    share = spec.anomaly.contamination if spec.anomaly.contamination is not None else spec.anomaly.alert_rate
    card = {
        "version": out_dir.name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "profile": "unsupervised",
        "data": {**(data_info or {}), "rows": int(len(frame)), "series": len(cases)},
        "split": {
            "per_series": f"first {TRAIN_SHARE:.0%} train (clean), next {VALID_SHARE:.0%} validation (injected copies,"
            f" seeds {list(VALID_SEEDS)}), last {1 - TRAIN_SHARE - VALID_SHARE:.0%} holdout (injected, seeds "
            f"{list(HOLDOUT_SEEDS)})",
            "train_rows": int(len(stacked)),
        },
        "features": list(spec.request_fields),
        "model_columns": list(spec.model_columns),
        "label": None,
        "threshold": threshold,
        "threshold_rule": f"{spec.threshold.policy} {share}: the {1 - share:.4g} quantile of the "
        + (
            "clean training and validation rows' scores"
            if spec.anomaly.contamination is not None
            else "clean validation rows' scores"
        ),
        "model": {"kind": model.kind, "params": params, "evidence": list(model.evidence.names)},
        "tuning": {
            "objective": "mean over anomaly kinds of the mean AUPRC over injected validation copies",
            "trials_run": len(study.trials),
            "best_validation_auprc": round(float(study.best_value), 4),
            "seed": seed,
            "kinds": sorted({c.kind for p in prepared for c in p.valid}),
        },
        "metrics": {"validation_auprc": round(mean_auprc(validation), 4), "holdout_by_kind": holdout},
        "training": {"seconds": round(time.monotonic() - started, 1)},
        "libraries": library_versions(),
    }
    return modelstore.save_model(model, card, out_dir, detector=spec)


def card_json(card: dict) -> str:
    """The card as the model directory stores it."""
    return json.dumps(card, indent=2) + "\n"


def detector_long_frame(spec: DetectorSpec, data_path: Path | None = None) -> pd.DataFrame:
    """The detector's CSV as a long frame: `time` (int ns), its group_by tags ("" when the CSV lacks one)
    and its fields, through tickguard.data's loader (columns and values checked there)."""
    from tickguard.data.dataset import ELAPSED, load_detector_frame

    raw = load_detector_frame(spec, data_path)
    column, unit = spec.time.column, spec.time.unit
    if not column:
        times = (raw[ELAPSED].to_numpy() * 1e9).astype(np.int64)
    elif unit == "rfc3339":
        times = (
            pd.to_datetime(raw[column], utc=True, format="ISO8601")
            .astype("datetime64[ns, UTC]")
            .astype("int64")
        )
        times = times.to_numpy()
    else:
        scale = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}[unit]
        times = (pd.to_numeric(raw[column]).to_numpy(dtype=np.float64) * scale).astype(np.int64)
    frame = pd.DataFrame({"time": times})
    for tag in spec.windows.group_by:
        frame[tag] = raw[tag].astype(str).to_numpy() if tag in raw.columns else ""
    for name in spec.feature_fields:
        frame[name] = raw[name].to_numpy(dtype=np.float64)
    return frame


def season_points(spec: DetectorSpec) -> int | None:
    """The season the injector uses: the detector's seasonal difference in points, if it declares one."""
    seasonal = spec.windows.seasonal if spec.windows else None
    return seasonal.points if seasonal is not None and seasonal.points is not None else None


def train_detector(
    spec: DetectorSpec,
    *,
    n_trials: int,
    seed: int,
    models_root: Path,
    out_dir: Path | None = None,
    data_path: Path | None = None,
    promote: bool = False,
    timeout_s: float | None = None,
) -> Path:
    """`tickguard train` for an unlabelled detector: train into models/<detector>/<version>; with `promote`,
    make it production unless the served model of the same spec did better on validation."""
    from tickguard.training.train import _data_description, new_version

    frame = detector_long_frame(spec, data_path)
    _, data_info = _data_description(spec, data_path, frame)
    out_dir = Path(out_dir) if out_dir is not None else models_root / new_version()
    card = train_unsupervised(
        spec, out_dir, frame, period=season_points(spec), n_trials=n_trials, seed=seed,
        data_info=data_info, timeout_s=timeout_s,
    )  # fmt: skip
    log.info("wrote %s: %s, threshold %.4f", out_dir, card["model"]["kind"], card["threshold"])
    if promote:
        decision = _promotion(models_root, card)
        card["promotion"] = decision
        (out_dir / modelstore.CARD_FILE).write_text(card_json(card))
        if decision["promote"]:
            modelstore.promote(models_root, out_dir.name)
            log.info("%s/production -> %s (%s)", models_root, out_dir.name, decision["reason"])
        else:
            log.warning("not promoted: %s", decision["reason"])
    return out_dir


def _promotion(models_root: Path, card: dict) -> dict:
    from tickguard.errors import ModelIntegrityError

    try:
        served = modelstore.read_card(modelstore.resolve_model_dir(models_root, modelstore.PRODUCTION))
    except ModelIntegrityError:
        return {"promote": True, "reason": "no model is served yet"}
    ours = card["metrics"]["validation_auprc"]
    theirs = (served.get("metrics") or {}).get("validation_auprc")
    if theirs is None or served.get(modelstore.CARD_DETECTOR_SHA256) != card.get(
        modelstore.CARD_DETECTOR_SHA256
    ):
        return {
            "promote": True,
            "against": served.get("version"),
            "reason": "the served model is not comparable",
        }
    better = ours >= theirs
    return {
        "promote": better,
        "against": served.get("version"),
        "reason": f"validation mean AUPRC {ours:.4f} {'>=' if better else '<'} the served {theirs:.4f}",
    }
