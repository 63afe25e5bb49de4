"""In-memory LoRA adapters as task vectors: `LoRAAdapter(weights, scale)`, next to full checkpoints and PEFT folders.

The public form is what a PEFT adapter folder holds, in memory and keyed by the weight it adapts:
`weights = {HF weight name ("model.layers.0.self_attn.q_proj.weight"): (A [r, in], B [out, r])}` (PEFT's / HF's
[out, in] layout; numpy, JAX or CPU torch arrays) and `scale` (lora_alpha / r; alpha / sqrt(r) for rsLoRA); its task
vector is tau = B @ A * scale on those weights and zero elsewhere. Ways to get one:

- a jax_cat LoRA model: `LoRAAdapter(jax_cat.models.peft.lora_weights(model), model.lora.scale)`;
- a peft model in memory: `LoRAAdapter.from_state_dict(peft.get_peft_model_state_dict(m), alpha=..., rank=...)`;
- a PEFT folder read whole: `LoRAAdapter.from_folder(folder)` (folders also work as paths, streamed).

Where it is accepted: `merging.task_vector(adapter, base)` (base a dict keyed by HF names), the in-memory merges
(`merging.methods.merge(base, [adapter, ...], spec)`: each adapted leaf is densified, base + tau, only when the
merge reaches it) and, against a base checkpoint on disk, `merge_checkpoints` / `analyze_checkpoints`
(`AdapterView`: one tensor or row block densified at a time). numpy + safetensors only (the merging core's wall).
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from merging.checkpoint import CheckpointMismatchError, TensorInfo

__all__ = ["AdapterView", "LoRAAdapter", "adapted_leaves", "dense_leaf"]

_STATE_NAME = re.compile(r"^(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.default)?\.weight$")


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor (CPU): no torch import here
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, np.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class LoRAAdapter:
    """A LoRA adapter in memory: `weights` {HF weight name: (A [r, in], B [out, r])}, `scale` (tau = B @ A * scale).

    The pairs are kept as float32 numpy arrays (the adapter is small); ValueError naming the weight for pairs that
    are not 2-D or whose ranks differ."""

    weights: Mapping[str, tuple[Any, Any]]
    scale: float

    def __post_init__(self):
        pairs = {}
        for name, pair in self.weights.items():
            if not isinstance(pair, tuple | list) or len(pair) != 2:
                raise ValueError(f"LoRAAdapter: weights[{name!r}] must be a pair (A [r, in], B [out, r])")
            a, b = (_numpy(x) for x in pair)
            if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
                raise ValueError(f"LoRAAdapter: {name!r}: A {a.shape} and B {b.shape} are not A [r, in], B [out, r]")
            pairs[name] = (a, b)
        if not pairs:
            raise ValueError("LoRAAdapter: no weights")
        if not math.isfinite(float(self.scale)):
            raise ValueError(f"LoRAAdapter: scale must be finite, got {self.scale!r}")
        object.__setattr__(self, "weights", pairs)
        object.__setattr__(self, "scale", float(self.scale))

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Any], *, alpha: float, rank: int,
                        use_rslora: bool = False) -> "LoRAAdapter":
        """From PEFT tensor names ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" [r, in], the
        ".lora_B." one [out, r]; what adapter_model.safetensors and `peft.get_peft_model_state_dict` hold)."""
        found: dict[str, dict[str, Any]] = {}
        for key, value in state_dict.items():
            m = _STATE_NAME.match(key)
            if m is None:
                raise ValueError(f"LoRAAdapter.from_state_dict: {key!r} is not a LoRA A/B weight")
            found.setdefault(m.group(1) + ".weight", {})[m.group(2)] = value
        broken = [k for k, v in found.items() if set(v) != {"A", "B"}]
        if broken:
            raise ValueError(f"LoRAAdapter.from_state_dict: {broken[0]} has only one of lora_A / lora_B")
        scale = alpha / math.sqrt(rank) if use_rslora else alpha / rank
        return cls({k: (v["A"], v["B"]) for k, v in found.items()}, scale)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike[str]) -> "LoRAAdapter":
        """A PEFT LoRA folder read into memory (its settings checked as `merging.adapters.read_adapter` does)."""
        from safetensors import safe_open

        from merging.adapters import WEIGHTS_FILE, read_adapter

        scale, names = read_adapter(folder)
        with safe_open(str(Path(folder) / WEIGHTS_FILE), framework="numpy") as handle:
            return cls({w: (handle.get_tensor(a), handle.get_tensor(b)) for w, (a, b) in names.items()}, scale)

    def shape(self, name: str) -> tuple[int, int]:
        """(out, in) of the weight adapted as `name`, the shape its delta takes."""
        a, b = self.weights[name]
        return b.shape[0], a.shape[1]

    def delta(self, name: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """tau of one weight (rows [start, stop) when given), float32 [out, in]."""
        a, b = self.weights[name]
        b = b if start is None else b[start:stop]
        return (b @ a) * np.float32(self.scale)

    def check(self, shapes: Mapping[str, Any], where: str = "the base") -> None:
        """CheckpointMismatchError naming the weight when the adapter adapts a weight `shapes` lacks or misfits."""
        for name in self.weights:
            if name not in shapes:
                raise CheckpointMismatchError(f"in-memory LoRA adapter: it adapts {name!r}, which {where} does not have")
            if tuple(shapes[name]) != self.shape(name):
                raise CheckpointMismatchError(f"in-memory LoRA adapter: {name!r}: B @ A gives {self.shape(name)}, "
                                              f"{where} has {tuple(shapes[name])}")

    def task_vector(self, base: Mapping[str, Any], *, dtype: Any = None) -> dict:
        """tau shaped like `base` (a dict keyed by HF names): B @ A * scale where adapted, zeros elsewhere; each leaf
        in `dtype` (None: the base leaf's dtype)."""
        import jax.numpy as jnp

        self.check({k: getattr(v, "shape", ()) for k, v in base.items()})
        out = {}
        for name, leaf in base.items():
            out_dtype = jnp.dtype(dtype if dtype is not None else leaf.dtype)
            out[name] = (jnp.asarray(self.delta(name)).astype(out_dtype) if name in self.weights else
                         jnp.zeros(leaf.shape, out_dtype))
        return out

    def as_checkpoint(self, base: Any) -> "AdapterView":
        """This adapter on `base` (a `merging.checkpoint.Checkpoint`) read as a full checkpoint (`AdapterView`)."""
        return AdapterView(self, base)

    def __repr__(self) -> str:
        return f"LoRAAdapter({len(self.weights)} weights, scale={self.scale:g})"


class _AdaptedLeaf:
    """base + tau of one weight, not yet computed: shape and dtype (float32) for the structure checks; `dense_leaf`
    (whole) or slicing (a row block) computes it."""

    def __init__(self, base: Any, adapter: LoRAAdapter, name: str):
        self.base, self.adapter, self.name = base, adapter, name
        self.shape, self.dtype = tuple(base.shape), np.dtype(np.float32)

    def __getitem__(self, rows: slice) -> Any:
        import jax.numpy as jnp

        start, stop, _ = rows.indices(self.shape[0])
        return jnp.asarray(self.base[start:stop], jnp.float32) + self.adapter.delta(self.name, start, stop)

    def dense(self) -> Any:
        import jax.numpy as jnp

        return jnp.asarray(self.base, jnp.float32) + self.adapter.delta(self.name)


def adapted_leaves(adapter: LoRAAdapter, base: Mapping[str, Any]) -> dict:
    """The fine-tuned model base + tau as a dict like `base` whose adapted leaves are computed on use (`dense_leaf`);
    the in-memory merge's view of an adapter (needs `base` keyed by HF names)."""
    if not isinstance(base, Mapping):
        raise TypeError("an in-memory LoRA adapter merges into a base dict keyed by HF tensor names, got "
                        f"{type(base).__name__}")
    adapter.check({k: getattr(v, "shape", ()) for k, v in base.items()})
    return {k: _AdaptedLeaf(v, adapter, k) if k in adapter.weights else v for k, v in base.items()}


def dense_leaf(x: Any) -> Any:
    """A leaf of `adapted_leaves` computed (base + tau, float32); any other leaf as it is."""
    return x.dense() if isinstance(x, _AdaptedLeaf) else x


class AdapterView:
    """An in-memory adapter on a base checkpoint, read as the full checkpoint base + tau (float32 where adapted): the
    interface of `merging.checkpoint.Checkpoint` that `merge_checkpoints` / `analyze_checkpoints` read, one tensor
    or row block densified at a time (as `merging.adapters.AdapterCheckpoint` for folders)."""

    def __init__(self, adapter: LoRAAdapter, base: Any):
        adapter.check({n: i.shape for n, i in base.info.items()}, f"the base ({base.path})")
        self.adapter, self.base = adapter, base
        self.path = f"<in-memory {adapter!r}>"
        self.dir = base.dir
        self.info: dict[str, TensorInfo] = {
            n: TensorInfo("F32", i.shape, i.file) if n in adapter.weights else i for n, i in base.info.items()}
        self.names = base.names

    def get(self, name: str) -> np.ndarray:
        """One tensor of the adapted model: base + the adapter's delta (float32) where adapted, else the base's."""
        if name not in self.adapter.weights:
            return self.base.get(name)
        return np.asarray(self.base.get(name), np.float32) + self.adapter.delta(name)

    def get_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of `get(name)`, read without the rest, for the streaming merge's row blocks."""
        if name not in self.adapter.weights:
            return self.base.get_rows(name, start, stop)
        stop = min(stop, self.info[name].shape[0])
        return np.asarray(self.base.get_rows(name, start, stop), np.float32) + self.adapter.delta(name, start, stop)

    @property
    def config(self) -> dict[str, Any] | None:
        """The base checkpoint's config.json (an adapter does not change the architecture)."""
        return self.base.config

    def __repr__(self) -> str:
        return f"AdapterView({self.adapter!r} on {self.base!r})"
