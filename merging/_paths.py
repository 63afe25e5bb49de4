"""Path strings, include/exclude selection and HF-name classification shared by the merging modules.

Pytree paths are rendered as "a/b/0/c" (flax NNX's trailing ``.value`` is dropped, so an NNX State path reads
"layers/0/kernel"); HF tensor names such as "model.layers.3.self_attn.q_proj.weight" are single dict keys and render
unchanged. Filters and errors use these strings.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Union

import jax
import numpy as np

from jax_cat.io.safetensors import natural_key  # noqa: F401 - re-exported ("layers.2" before "layers.10")

PathSelector = Union[None, str, "re.Pattern[str]", Callable[[str], bool]]


def path_to_str(path: tuple[Any, ...]) -> str:
    """Render a `jax.tree_util` key path as "a/b/0/c"."""
    parts: list[str] = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, jax.tree_util.GetAttrKey):
            parts.append(key.name)
        elif isinstance(key, jax.tree_util.FlattenedIndexKey):
            parts.append(str(key.key))
        else:  # unknown key type: its str() is the best we can do
            parts.append(str(key))
    if len(parts) > 1 and isinstance(path[-1], jax.tree_util.GetAttrKey) and parts[-1] == "value":
        parts.pop()  # nnx.Variable wraps its array in `.value`; users think of "layer/kernel", not ".../value"
    return "/".join(parts)


def _as_predicate(selector: PathSelector, *, default: bool) -> Callable[[str], bool]:
    if selector is None:
        return lambda _path: default
    if callable(selector) and not isinstance(selector, (str, re.Pattern)):
        return selector
    if isinstance(selector, (str, re.Pattern)):
        pattern = re.compile(selector)
        return lambda path: pattern.search(path) is not None
    raise TypeError(f"filter/exclude must be None, a regex string or a predicate on the path string, got {selector!r}")


def make_selector(filter: PathSelector = None, exclude: PathSelector = None) -> Callable[[str], bool]:
    """Predicate "is this path selected": `filter` (regex searched in the path, or predicate) includes, `exclude` removes."""
    include = _as_predicate(filter, default=True)
    drop = _as_predicate(exclude, default=False)
    return lambda path: bool(include(path)) and not bool(drop(path))


def is_vector_leaf(x: Any) -> bool:
    """True for floating-point arrays: the only leaves that belong to a task vector (ints, keys, callables ride along)."""
    dtype = getattr(x, "dtype", None)
    if dtype is None or not hasattr(x, "shape"):
        return False
    try:
        return bool(np.issubdtype(dtype, np.inexact)) or dtype == jax.numpy.bfloat16
    except TypeError:  # extended dtypes (PRNG keys) are not numpy dtypes
        return False


# ---------------------------------------------------------------------------------------------------------------
# Module classification from HF (or NNX-like) names.
# ---------------------------------------------------------------------------------------------------------------
MODULES: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down", "embed", "lm_head", "norm", "other")
ATTENTION = ("q", "k", "v", "o")
MLP = ("gate", "up", "down")

_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|$)")
_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("norm", re.compile(r"(?:^|[._])(?:\w*norm\w*|ln_\w+|ln\d*)(?:\.|$)")),
    ("lm_head", re.compile(r"(?:^|\.)(?:lm_head|output|embed_out)(?:\.|$)")),
    ("embed", re.compile(r"(?:^|\.)(?:embed_tokens|wte|embed|embedding|embeddings|tok_embeddings)(?:\.|$)")),
    ("q", re.compile(r"(?:^|\.)(?:q_proj|wq|query)(?:\.|$)")),
    ("k", re.compile(r"(?:^|\.)(?:k_proj|wk|key)(?:\.|$)")),
    ("v", re.compile(r"(?:^|\.)(?:v_proj|wv)(?:\.|$)")),
    ("o", re.compile(r"(?:^|\.)(?:o_proj|wo|out_proj)(?:\.|$)")),
    ("gate", re.compile(r"(?:^|\.)(?:gate_proj|w1|gate)(?:\.|$)")),
    ("up", re.compile(r"(?:^|\.)(?:up_proj|w3|up)(?:\.|$)")),
    ("down", re.compile(r"(?:^|\.)(?:down_proj|w2|down)(?:\.|$)")),
)


def classify_param(name: str) -> tuple[str, int | None]:
    """(module, layer) of a parameter name: module in `MODULES`, layer the decoder-layer index or None.

    Understands HF names ("model.layers.3.self_attn.q_proj.weight", "lm_head.weight") and slash paths
    ("layers/3/attn/q_proj/kernel").
    """
    dotted = name.replace("/", ".")
    match = _LAYER.search(dotted)
    layer = int(match.group(1)) if match else None
    for module, pattern in _RULES:
        if pattern.search(dotted):
            return module, layer
    return "other", layer
