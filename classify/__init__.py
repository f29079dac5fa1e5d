"""Classify cached CNN codes: train, compare, evaluate and predict with scikit-learn."""
from .compare import compare
from .model_io import load_model
from .models import CLASSIFIERS, DEFAULT_NORMALIZE
from .predict import predict_codes
from .report import summarize
from .train import classify_codes

__all__ = ["classify_codes", "compare", "predict_codes", "load_model", "summarize", "CLASSIFIERS",
           "DEFAULT_NORMALIZE"]
