"""Preprocessing, resampling and estimators, assembled into one imbalanced-learn Pipeline.

The pipeline is ``normalize -> [sampler(s)] -> classifier``. imbalanced-learn's Pipeline applies
samplers only while fitting, so inside cross-validation each training fold is resampled and the
held-out fold (like the final test split) never is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
from imblearn.over_sampling import RandomOverSampler
from imblearn.pipeline import Pipeline
from imblearn.under_sampling import RandomUnderSampler
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.svm import SVC
from sklearn.utils import check_array
from sklearn.utils.class_weight import compute_class_weight

from cnncodes.extract.errors import UsageError

from .linear_svm import SquaredHingeSVC
from .options import check_options

C_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0)  # codes are L2-normalized by default, so useful C values are large


class PowerNormalizer(TransformerMixin, BaseEstimator):
    """Signed power normalization ``sign(x) * |x| ** alpha`` followed by L2 normalization per row.

    With ``alpha=0.5`` this is the signed square root used for Fisher vectors and CNN codes
    (Perronnin et al. 2010): it damps bursty, large activations before the linear model.
    """

    def __init__(self, alpha: float = 0.5):
        self.alpha = alpha

    def fit(self, X, y=None):
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def transform(self, X):
        X = check_array(X, dtype=(np.float32, np.float64))  # float32 codes stay float32: half the memory
        out = np.abs(X)
        out **= self.alpha
        np.copysign(out, X, out=out)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out /= np.where(norms > 0, norms, 1)
        return out


def make_normalizer(normalize: str):
    """``power`` (signed sqrt + L2, the default), ``l2``, ``standard`` (z-score) or ``none``."""
    steps = {"power": PowerNormalizer, "l2": lambda: Normalizer("l2"), "standard": StandardScaler,
             "none": lambda: "passthrough"}
    check_options({"normalize": normalize})
    return steps[normalize]()


def median_target(y) -> int:
    """The median class size of ``y`` (rounded down): where ``hybrid`` sampling brings every class."""
    return int(np.median(np.unique(y, return_counts=True)[1]))


class MedianSampler(BaseEstimator):
    """``hybrid`` resampling: classes below the median class size are over-sampled up to it, classes above
    under-sampled down to it, so every class ends at the median.

    The median is computed once, from the counts this sampler is given (a CV training fold, or the
    whole training split), and both samplers get it: recomputing it after over-sampling would move it.
    """

    def __init__(self, random_state: int | None = None):
        self.random_state = random_state

    def fit_resample(self, X, y, **params):
        target = median_target(y)
        classes, counts = np.unique(y, return_counts=True)
        up = {int(c): target for c, n in zip(classes, counts) if n < target}
        down = {int(c): target for c, n in zip(classes, counts) if n > target}
        if up:
            X, y = RandomOverSampler(sampling_strategy=up, random_state=self.random_state).fit_resample(X, y)
        if down:
            X, y = RandomUnderSampler(sampling_strategy=down, random_state=self.random_state).fit_resample(X, y)
        return X, y


def median_up(y) -> dict:
    """Kept so that models saved before MedianSampler still load; new pipelines use MedianSampler."""
    target = median_target(y)
    return {int(c): target for c, n in zip(*np.unique(y, return_counts=True)) if n < target}


def median_down(y) -> dict:
    """Kept so that models saved before MedianSampler still load; new pipelines use MedianSampler.
    After ``median_up`` the smallest class is at the original median, so that is the target."""
    classes, counts = np.unique(y, return_counts=True)
    target = int(counts.min())
    return {int(c): target for c, n in zip(classes, counts) if n > target}


def make_samplers(sampling: str, seed: int) -> list[tuple[str, object]]:
    """Pipeline steps for a resampling mode (training data only).

    - ``over``: random over-sampling of every class up to the largest class size.
    - ``under``: random under-sampling of every class down to the smallest class size.
    - ``hybrid``: over-sample the minority classes up to the median class size, then under-sample
      the majority classes down to it, so every class ends at the median: fewer duplicates than
      ``over`` and less discarded data than ``under``.
    """
    check_options({"sampling": sampling})
    if sampling == "none":
        return []
    if sampling == "over":
        return [("over", RandomOverSampler(sampling_strategy="not majority", random_state=seed))]
    if sampling == "under":
        return [("under", RandomUnderSampler(sampling_strategy="not minority", random_state=seed))]
    return [("hybrid", MedianSampler(random_state=seed))]


def parse_class_weight(spec, class_names: list[str]):
    """``balanced``, ``none``, ``"CLASS=W,CLASS=W"`` or a {name: weight} dict -> sklearn's class_weight.

    Classes not named in an explicit list keep weight 1.
    """
    if spec is None or spec == "none":
        return None
    if spec == "balanced":
        return "balanced"
    if isinstance(spec, str):
        pairs = [item.split("=", 1) for item in spec.split(",") if item.strip()]
        if not pairs or any(len(p) != 2 for p in pairs):
            raise UsageError(f"class weights must look like CLASS=WEIGHT,CLASS=WEIGHT (or balanced / none), got {spec!r}")
        spec = {name.strip(): weight.strip() for name, weight in pairs}
    if not isinstance(spec, Mapping):
        raise UsageError(f"unknown class weight {spec!r}; use balanced, none or CLASS=WEIGHT,...")
    unknown = [name for name in spec if name not in class_names]
    if unknown:
        raise UsageError(f"class weight for unknown class {', '.join(map(repr, unknown))}; "
                         f"classes are: {', '.join(class_names)}")
    weights = {}
    for name, value in spec.items():
        try:
            weights[class_names.index(name)] = float(value)
        except (TypeError, ValueError):
            raise UsageError(f"class weight for {name!r} is not a number: {value!r}") from None
        if not weights[class_names.index(name)] > 0:
            raise UsageError(f"class weight for {name!r} must be positive, got {value!r}")
    return weights


def class_weight_values(class_weight, y) -> dict[int, float] | None:
    """A parsed class weight as explicit {class: weight}: ``balanced`` from the label counts in ``y``
    (scikit-learn's n / (k x count)), a dict as given. Pass the labels the model is fitted on, after
    resampling, as a classifier in the pipeline sees them: resampled classes are balanced already."""
    if class_weight != "balanced":
        return class_weight
    classes = np.unique(y)
    return {int(c): float(w) for c, w in zip(classes, compute_class_weight("balanced", classes=classes, y=y))}


@dataclass(frozen=True)
class ClassifierSpec:
    """How to build one kind of classifier and which hyper-parameter to cross-validate."""

    build: Callable[..., BaseEstimator]
    param: str  # the searched hyper-parameter
    grid: tuple
    default: object
    takes_class_weight: bool = True
    warm_path: bool = False  # CV fits the grid in ascending order per fold, each fit starting from the last
    cv_max_rows: int | None = None  # CV on a stratified sample of at most this many rows (None: cv.CV_MAX_ROWS)
    cv_params: Mapping | None = None  # classifier settings for the CV fits only (the final fit keeps its own)


CLASSIFIERS: dict[str, ClassifierSpec] = {
    # LinearSVC(dual=False)'s problem, solved for all classes at once in float32 (classify/linear_svm.py)
    # CV on at most 5,000 rows, at tol 1e-3, for speed (bench/RESULTS.md); on real training sets, samples chose
    # a larger C than the full CV did (bench/RESULTS.md, issue 22 item 13)
    "svm": ClassifierSpec(lambda cw, seed: SquaredHingeSVC(class_weight=cw, random_state=seed),
                          "C", C_GRID, 1.0, warm_path=True, cv_max_rows=5_000, cv_params={"tol": 1e-3}),
    "softmax": ClassifierSpec(lambda cw, seed: LogisticRegression(class_weight=cw, max_iter=5000, random_state=seed),
                              "C", C_GRID, 1.0),
    "knn": ClassifierSpec(lambda cw, seed: KNeighborsClassifier(), "n_neighbors", (1, 3, 5, 9, 15), 5,
                          takes_class_weight=False),
    "rbf_svm": ClassifierSpec(lambda cw, seed: SVC(kernel="rbf", gamma="scale", class_weight=cw, random_state=seed),
                              "C", (0.1, 1.0, 10.0, 100.0), 1.0),
    "forest": ClassifierSpec(lambda cw, seed: RandomForestClassifier(n_estimators=200, class_weight=cw,
                                                                     random_state=seed),
                             "min_samples_leaf", (1, 3), 1),
}
"""svm: linear SVM (LinearSVC's squared-hinge one-vs-rest problem); softmax: multinomial LogisticRegression;
knn: k-nearest neighbours; rbf_svm: kernel SVC; forest: random forest. ``C`` applies to svm, softmax and rbf_svm."""


def classifier_spec(name: str) -> ClassifierSpec:
    check_options({"classifier": name})
    return CLASSIFIERS[name]


def build_pipeline(classifier: str, normalize: str, sampling: str, class_weight, seed: int) -> Pipeline:
    """``normalize -> samplers -> classifier`` (class_weight already parsed)."""
    spec = classifier_spec(classifier)
    clf = spec.build(class_weight if spec.takes_class_weight else None, seed)
    return Pipeline([("normalize", make_normalizer(normalize)), *make_samplers(sampling, seed), ("clf", clf)])


def param_grid(classifier: str, C: float | None, n_train_fold: int) -> dict[str, list]:
    """The values to cross-validate: a fixed ``C`` gives a one-point grid; kNN's k is capped by the fold size."""
    spec = classifier_spec(classifier)
    if C is not None and spec.param == "C":
        return {"clf__C": [float(C)]}
    values = list(spec.grid)
    if spec.param == "n_neighbors":
        values = [k for k in values if k <= n_train_fold] or [1]
    return {f"clf__{spec.param}": values}
