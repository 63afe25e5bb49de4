"""Optional dependencies, grouped into pip extras: a missing one is one line naming the extra, never a traceback.

jax-cat's core (models, sampling, losses, training, evaluation, pytree merging) installs with `pip install jax-cat`.
Heavier features live in extras (`pyproject.toml`): `dots` (the Vizier search), `data` (dataset files and hub
datasets through `datasets`), `plots` (matplotlib), `tensorboard`, `wandb` (Weights & Biases logging); `all` is
every one of them but `wandb` (a hosted service's client, taken by name: `pip install 'jax-cat[all,wandb]'`). This module is the
single place that maps an import to its extra, so every entry point says the same thing:

    vizier = require("vizier.service.clients", feature="the DoTS coefficient search")
    plt = optional("matplotlib.pyplot", feature="the pass@k plot")   # None (and one note) when absent

It imports nothing but the standard library, so `merging` may use it without pulling in jax_cat's models.
"""
from __future__ import annotations

import importlib
import sys
from types import ModuleType

__all__ = ["EXTRA_OF", "MissingExtraError", "extra_for", "optional", "pyplot", "require"]

# Top-level import name -> the extra that installs it (including the designers' JAX-side needs of Vizier).
EXTRA_OF: dict[str, str] = {
    "vizier": "dots", "equinox": "dots", "jaxopt": "dots", "jaxtyping": "dots", "typeguard": "dots",
    "tensorflow_probability": "dots", "tree": "dots",
    "datasets": "data", "pyarrow": "data", "sqlalchemy": "dots",
    "matplotlib": "plots",
    "tensorboardX": "tensorboard",
    "wandb": "wandb",
}


class MissingExtraError(ImportError):
    """A feature needs an optional dependency group that is not installed; the message names the pip command."""


def extra_for(error: ModuleNotFoundError) -> str | None:
    """The extra whose absence caused `error`, or None when the missing module is not one of ours to name."""
    name = (error.name or "").split(".")[0]
    return EXTRA_OF.get(name)


def _message(extra: str, missing: str, feature: str) -> str:
    return (f"{feature} needs the optional dependencies of jax-cat's '{extra}' extra ({missing} is not installed): "
            f"pip install 'jax-cat[{extra}]'")


def require(module: str, *, feature: str) -> ModuleType:
    """Import `module`; when an extra's package is missing raise `MissingExtraError` saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        extra = extra_for(e)
        if extra is None:
            raise
        raise MissingExtraError(_message(extra, e.name or module, feature), name=e.name) from None


def optional(module: str, *, feature: str) -> ModuleType | None:
    """Import `module`, or print one note naming the extra and return None (for nice-to-haves such as plots)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        extra = extra_for(e)
        if extra is None:
            raise
        print(f"note: {feature} skipped ({e.name} is not installed): pip install 'jax-cat[{extra}]' to get it",
              file=sys.stderr)
        return None


def pyplot(*, feature: str) -> ModuleType | None:
    """matplotlib.pyplot on the file-only Agg backend, or None (and one note) when the 'plots' extra is absent."""
    matplotlib = optional("matplotlib", feature=feature)
    if matplotlib is None:
        return None
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")
