"""cnncodes as a Python library: extract CNN codes, read them as numpy, train, compare, finetune, advise, predict.

A thin facade over the ``extract``, ``classify``, ``finetune`` and ``advise`` packages. Importing it
loads neither torch nor scikit-learn: each function imports what it needs when it is called, so
``load_codes`` (h5py and numpy only) is as quick in a notebook as it is from the command line::

    import cnncodes

    cnncodes.extract_codes("data/digits", "digits.h5", layers=["block4", "penultimate"])
    codes = cnncodes.load_codes("digits.h5", layers="block4", split="train")   # codes.X, codes.y, ...
    report = cnncodes.train("digits.h5", "runs/svm", layers="block4", classifier="svm")
    result = cnncodes.predict("runs/svm", "data/digits/test", "preds.csv")
    report = cnncodes.finetune("data/digits", "runs/ft", epochs=3, quiet=True)    # predict works on it too

Options take the command line's names with underscores (``quiet=True``, ``layer=``, ``no_augment=True``).

``CodesTransformer`` turns a list of image paths into codes inside a scikit-learn ``Pipeline``.
"""
from importlib import import_module
from types import ModuleType

__version__ = "0.1.0"  # the one place: pyproject.toml reads it (importlib.metadata costs every command 15 ms)

__all__ = ["extract_codes", "load_codes", "Codes", "train", "compare", "finetune", "advise", "auto", "load_model",
           "predict", "CodesTransformer", "export", "__version__"]
_PACKAGES = ("finetune", "advise")  # both a stage's package and an API function: the package is callable


def __getattr__(name: str):
    """The API's names are imported on first use (PEP 562): ``import cnncodes`` loads neither numpy nor torch."""
    if name in _PACKAGES:
        return import_module(f".{name}", __name__)
    if name in __all__:
        return getattr(import_module(".api", __name__), name)
    raise AttributeError(f"module 'cnncodes' has no attribute {name!r}")


def lazy_names(package: str, where: dict[str, str]):
    """A package's PEP 562 ``__getattr__``: each name of ``where`` is imported from its submodule on first use,
    so importing the package loads nothing heavy."""
    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(f".{where[name]}", package), name)
    return __getattr__


class CallablePackage(ModuleType):
    """A stage package that is also the API function of the same name: ``cnncodes.finetune(images, out)``
    runs ``api.finetune``, while ``cnncodes.finetune.train`` stays the package's module."""

    def __call__(self, *args, **kwargs):
        return getattr(import_module(".api", __name__), self.__name__.rsplit(".", 1)[1])(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<cnncodes.{self.__name__.rsplit('.', 1)[1]}: package and API function>"
