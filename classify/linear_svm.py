"""A dense float32 linear SVM: liblinear's primal problem (L2-regularized squared hinge, one-vs-rest, the
bias a regularized feature) solved for every class at once with matrix products.

``LinearSVC(dual=False)`` solves the same problem one class after another, on a float64 copy of the codes
in liblinear's sparse row format; here each Newton step is a few BLAS products over all classes together,
on the codes as they are. ``fit`` can start from the previous solution (``warm_start``), which cross-validation uses
along an ascending C path.
"""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_array
from sklearn.utils.validation import check_is_fitted
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets

CG_FORCING = 0.1  # each Newton direction solves the Newton system to this relative residual (as TRON)
MAX_CG = 250
ARMIJO = 1e-4
STALL = 1e-6  # relative objective decrease below which a class stops (float32 carries ~7 digits)


class SquaredHingeSVC(ClassifierMixin, BaseEstimator):
    """``LinearSVC(dual=False)``'s model and objective (same C, class weights, tolerance rule and bias), fitted by
    inexact Newton with conjugate gradients on the generalized Hessian, all classes batched, with a line search.

    As liblinear does, one-vs-rest class ``k`` weighs its own rows by ``C * class_weight[k]`` and the others by
    ``C``; two classes are one problem, each row weighed by ``C`` times its class weight. Stops when every
    class's gradient norm is below ``tol`` x max(min(positives, negatives), 1) / rows x its norm at zero.
    """

    def __init__(self, C: float = 1.0, class_weight=None, tol: float = 1e-4, max_iter: int = 1000,
                 warm_start: bool = False, random_state=None):
        self.C = C
        self.class_weight = class_weight
        self.tol = tol
        self.max_iter = max_iter
        self.warm_start = warm_start
        self.random_state = random_state  # deterministic solver; kept for the classifier interface

    def fit(self, X, y):
        X = check_array(X, dtype=(np.float32, np.float64), order="C")
        check_classification_targets(y)
        classes, y_index = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError("a linear SVM needs at least 2 classes in the training data")
        cw = compute_class_weight(self.class_weight, classes=classes, y=y).astype(X.dtype)
        Y, cost = _targets(y_index, len(classes), cw, float(self.C), X.dtype)
        n_pos = (Y > 0).sum(axis=0)
        eps = self.tol * np.maximum(np.minimum(n_pos, len(y) - n_pos), 1) / len(y)
        K = Y.shape[1]
        start = (self.warm_start and getattr(self, "coef_", None) is not None
                 and self.coef_.shape == (K, X.shape[1]) and np.array_equal(self.classes_, classes))
        W = self.coef_.T.astype(X.dtype) if start else np.zeros((X.shape[1], K), X.dtype)
        b = self.intercept_.astype(X.dtype) if start else np.zeros(K, X.dtype)
        W, b, self.n_iter_ = _newton(X, Y, cost, W, b, eps, self.max_iter)
        self.classes_, self.coef_, self.intercept_ = classes, np.ascontiguousarray(W.T), b
        self.n_features_in_ = X.shape[1]
        return self

    def decision_function(self, X) -> np.ndarray:
        """One score per class (one column, for the second class, with two classes), as LinearSVC: in float64,
        so that a row's score does not depend on how many rows are scored with it (float32 products do)."""
        check_is_fitted(self)
        X = check_array(X, dtype=(np.float32, np.float64))
        scores = X @ self.coef_.T.astype(np.float64) + self.intercept_
        return scores.ravel() if scores.shape[1] == 1 else scores

    def predict(self, X) -> np.ndarray:
        scores = self.decision_function(X)
        return self.classes_[(scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)]


def _targets(y_index: np.ndarray, n_classes: int, cw: np.ndarray, C: float, dtype):
    """(+1/-1 targets, per-row costs), one column per one-vs-rest problem (one column for two classes)."""
    if n_classes == 2:
        Y = np.where(y_index == 1, 1, -1).astype(dtype)[:, None]
        return Y, (C * cw[y_index]).astype(dtype)[:, None]
    Y = -np.ones((len(y_index), n_classes), dtype)
    Y[np.arange(len(y_index)), y_index] = 1
    return Y, np.where(Y > 0, C * cw[None, :], C).astype(dtype)


def _objective(W, b, margin, cost):
    return 0.5 * ((W * W).sum(axis=0) + b * b) + (cost * margin * margin).sum(axis=0)


def _newton(X, Y, cost, W, b, eps, max_iter):
    """Per-class inexact Newton with a backtracking (Armijo) line search; every product is over all classes."""
    def gradient(slack):
        r = -2 * cost * Y * slack  # d loss / d score
        return W + X.T @ r, b + r.sum(axis=0)

    g0 = np.sqrt(((X.T @ (2 * cost * Y)) ** 2).sum(axis=0) + (2 * cost * Y).sum(axis=0) ** 2)
    score = X @ W + b
    slack = np.maximum(0, 1 - Y * score)
    f = _objective(W, b, slack, cost)
    stalled = np.zeros(len(f), bool)
    for it in range(1, max_iter + 1):
        gW, gb = gradient(slack)
        gnorm = np.sqrt((gW * gW).sum(axis=0) + gb * gb)
        active = (gnorm > eps * g0) & ~stalled
        if not active.any():
            return W, b, it - 1
        dW, db = _cg(*_active_rows(X, 2 * cost * (slack > 0)), gW, gb, active)
        dscore = X @ dW + db
        slope = (gW * dW).sum(axis=0) + gb * db
        step = np.ones_like(f)
        for _ in range(30):
            margin = np.maximum(0, 1 - Y * (score + step * dscore))
            f_new = _objective(W + step * dW, b + step * db, margin, cost)
            bad = f_new > f + ARMIJO * step * slope
            if not bad.any():
                break
            step = np.where(bad, step / 2, step)
        step = np.where(active, step, 0).astype(W.dtype)
        W, b, score = W + step * dW, b + step * db, score + step * dscore
        slack = np.maximum(0, 1 - Y * score)
        f, f_old = _objective(W, b, slack, cost), f
        stalled |= f_old - f <= STALL * np.abs(f_old)  # float32 rounding: no further progress to make
    warnings.warn(f"SquaredHingeSVC did not converge in {max_iter} Newton iterations",
                  ConvergenceWarning)
    return W, b, max_iter


def _active_rows(X, D):
    """The rows with a nonzero Hessian weight for some class (the others add nothing to it); a copy of
    them only while they are at most half of X, so the copy costs at most half the codes."""
    rows = np.flatnonzero(D.any(axis=1))
    return (X[rows], D[rows]) if len(rows) <= len(X) // 2 else (X, D)


def _cg(X, D, gW, gb, active):
    """Solve (I + X~' diag(D) X~) d = -g per column (X~ = [X, 1]) by conjugate gradients, batched over
    columns; each column stops at CG_FORCING x its first residual. (A diagonal preconditioner, as
    liblinear's, tripled the iterations on power-normalized codes, whose features have similar scales.)"""
    def hess(PW, Pb):
        t = D * (X @ PW + Pb)
        return PW + X.T @ t, Pb + t.sum(axis=0)

    dW, db = np.zeros_like(gW), np.zeros_like(gb)
    rW, rb = -gW, -gb
    pW, pb = rW.copy(), rb.copy()
    rr = (rW * rW).sum(axis=0) + rb * rb
    stop = (CG_FORCING ** 2) * rr
    todo = active & (rr > 0)
    for _ in range(MAX_CG):
        if not todo.any():
            break
        hW, hb = hess(pW, pb)
        php = (pW * hW).sum(axis=0) + pb * hb
        alpha = np.where(todo, rr / np.where(php > 0, php, 1), 0).astype(gW.dtype)
        dW += alpha * pW
        db += alpha * pb
        rW -= alpha * hW
        rb -= alpha * hb
        rr_new = (rW * rW).sum(axis=0) + rb * rb
        todo &= rr_new > stop
        beta = np.where(todo, rr_new / np.where(rr > 0, rr, 1), 0).astype(gW.dtype)
        pW, pb = rW + beta * pW, rb + beta * pb
        rr = rr_new
    return dW, db
