"""The svm classifier's solver (classify/linear_svm.py) against liblinear, and its warm-started CV over C."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from codes_fixtures import imbalanced_codes, make_codes
from sklearn.svm import LinearSVC

from cnncodes.classify import classify_codes, load_model, models
from cnncodes.classify.linear_svm import SquaredHingeSVC
from cnncodes.classify.models import PowerNormalizer

FAST = dict(progress=False, cv=3)


def _problem(n_per_class, n_features=40, seed=0):
    X, y = imbalanced_codes(n_per_class, n_features=n_features, seed=seed, sep=0.8)
    return PowerNormalizer().transform(X["block4"].astype(np.float32)), y


@pytest.mark.parametrize("n_per_class", [(60, 30, 12), (50, 20)])
@pytest.mark.parametrize("class_weight", ["balanced", None, {0: 0.5, 1: 3.0}])
@pytest.mark.parametrize("C", [0.1, 10.0, 1000.0])
def test_same_solution_as_liblinear_primal(n_per_class, class_weight, C):
    X, y = _problem(n_per_class)
    ref = LinearSVC(C=C, dual=False, class_weight=class_weight, tol=1e-6, max_iter=10000).fit(X, y)
    ours = SquaredHingeSVC(C=C, class_weight=class_weight, tol=1e-6).fit(X, y)
    assert ours.coef_.shape == ref.coef_.shape and ours.intercept_.shape == ref.intercept_.shape
    assert ours.coef_ == pytest.approx(ref.coef_, rel=1e-2, abs=1e-2 * float(np.abs(ref.coef_).max()))
    assert ours.intercept_ == pytest.approx(ref.intercept_, rel=1e-2, abs=1e-2 * float(np.abs(ref.intercept_).max()))
    assert (ours.predict(X) == ref.predict(X)).mean() >= 0.99
    assert ours.decision_function(X).shape == ref.decision_function(X).shape


def test_float32_codes_stay_float32():
    X, y = _problem((60, 30, 12))
    model = SquaredHingeSVC(C=10).fit(X, y)
    assert X.dtype == np.float32 and model.coef_.dtype == np.float32
    assert model.decision_function(X).dtype == np.float64  # as LinearSVC: scores do not depend on the batch
    assert model.decision_function(X[:7]) == pytest.approx(model.decision_function(X)[:7], rel=1e-12)


def test_warm_start_reaches_the_cold_solution_in_fewer_iterations():
    X, y = _problem((60, 30, 12))
    warm = SquaredHingeSVC(C=10, warm_start=True).fit(X, y).set_params(C=100).fit(X, y)
    cold = SquaredHingeSVC(C=100).fit(X, y)
    assert warm.coef_ == pytest.approx(cold.coef_, abs=2e-2 * float(np.abs(cold.coef_).max()))
    assert warm.n_iter_ < cold.n_iter_
    assert (warm.predict(X) == cold.predict(X)).all()


def test_iteration_limit_warns():
    X, y = _problem((60, 30, 12))
    with pytest.warns(UserWarning, match="did not converge in 1 Newton iterations"):
        SquaredHingeSVC(C=100, max_iter=1).fit(X, y)


def test_one_class_refused():
    with pytest.raises(ValueError, match="at least 2 classes"):
        SquaredHingeSVC().fit(np.ones((4, 3), np.float32), [1, 1, 1, 1])


@pytest.fixture(scope="module")
def codes(tmp_path_factory):
    return make_codes(tmp_path_factory.mktemp("codes") / "codes.h5", n_per_class=(80, 40, 20))


@pytest.mark.parametrize("sampling", ["none", "hybrid"])
def test_warm_path_cv_chooses_as_grid_search(codes, tmp_path, monkeypatch, sampling):
    path = classify_codes(codes, tmp_path / "path", sampling=sampling, **FAST)
    monkeypatch.setitem(models.CLASSIFIERS, "svm", replace(models.CLASSIFIERS["svm"], warm_path=False))
    grid = classify_codes(codes, tmp_path / "grid", sampling=sampling, **FAST)  # GridSearchCV, every fit cold
    assert path["C"] == grid["C"] and path["cv_score"] == pytest.approx(grid["cv_score"], abs=0.01)
    assert path["balanced_accuracy"] == grid["balanced_accuracy"]
    assert isinstance(load_model(tmp_path / "path")["pipeline"].named_steps["clf"], SquaredHingeSVC)


def test_svm_cv_runs_on_its_sample_at_its_cv_tolerance_and_the_final_fit_on_all_rows(codes, tmp_path, monkeypatch):
    monkeypatch.setitem(models.CLASSIFIERS, "svm", replace(models.CLASSIFIERS["svm"], cv_max_rows=60))
    fits = []
    fit = SquaredHingeSVC.fit
    monkeypatch.setattr(SquaredHingeSVC, "fit", lambda self, X, y: fits.append((len(y), self.tol)) or fit(self, X, y))
    report = classify_codes(codes, tmp_path, **FAST)
    assert any("stratified sample of 60 of" in note for note in report["notes"])
    cv_fits, final = fits[:-1], fits[-1]
    assert len(cv_fits) == 3 * len(models.C_GRID) and {tol for _, tol in cv_fits} == {1e-3}
    assert max(n for n, _ in cv_fits) == 40 and final == (report["n_train"], 1e-4)
    assert load_model(tmp_path)["pipeline"].named_steps["clf"].tol == 1e-4


def test_warm_path_cv_in_parallel_chooses_as_in_sequence(codes, tmp_path):
    one = classify_codes(codes, tmp_path / "one", **FAST)
    two = classify_codes(codes, tmp_path / "two", n_jobs=2, **FAST)
    keys = ("C", "cv_score", "balanced_accuracy")
    assert [two[k] for k in keys] == [one[k] for k in keys]
