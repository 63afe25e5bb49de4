"""Device mesh (data, fsdp, tensor) and placement of NNX parameters by their logical axis names.

Every model parameter carries logical axis names in its `out_sharding` metadata (e.g. q_proj: embed, heads,
head_dim). A rules table maps each logical name to a mesh axis: FSDP shards the embed dimension, tensor parallelism
shards heads / kv_heads / mlp / vocab, and the batch is split over (data, fsdp). A dimension whose size does not
divide by its mesh axis is replicated instead (e.g. 2 kv heads on 4 tensor shards), so any mesh fits any model.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES: tuple[str, str, str] = ("data", "fsdp", "tensor")
BATCH_AXES: tuple[str, str] = ("data", "fsdp")

# logical axis name -> mesh axis (None = replicated)
DEFAULT_RULES: Mapping[str, str | None] = {
    "embed": "fsdp",
    "vocab": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "head_dim": None,
}


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A Mesh with axes ("data", "fsdp", "tensor"); one size may be -1 to take all remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got data={data}, fsdp={fsdp}, tensor={tensor}")
    bad = {name: size for name, size in zip(MESH_AXES, sizes) if size != -1 and (not isinstance(size, int) or size < 1)}
    if bad:
        raise ValueError(f"mesh axis sizes must be positive ints (or -1 for the rest), got {bad}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not split into fsdp*tensor*data with fixed sizes {sizes}")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(
            f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} needs {int(np.prod(sizes))} devices, "
            f"{len(devices)} given"
        )
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def logical_axes(variable: nnx.Variable) -> tuple[str | None, ...] | None:
    """The logical axis names a Variable was annotated with (None when it has none)."""
    axes = variable.get_metadata().get("out_sharding")
    return tuple(axes) if axes is not None else None


def logical_to_pspec(
    axes: Sequence[str | None] | None,
    shape: Sequence[int] | None = None,
    mesh: Mesh | None = None,
    rules: Mapping[str, str | None] = DEFAULT_RULES,
) -> PartitionSpec:
    """PartitionSpec for logical `axes`; with shape and mesh, dims that don't divide their mesh axis are replicated."""
    if axes is None:
        return PartitionSpec()
    spec: list[str | None] = []
    used: set[str] = set()
    for dim, name in enumerate(axes):
        mesh_axis = rules.get(name) if name is not None else None
        if mesh_axis is not None and mesh_axis in used:
            mesh_axis = None  # one mesh axis can shard only one dim
        if mesh_axis is not None and shape is not None and mesh is not None:
            if shape[dim] % mesh.shape[mesh_axis]:
                mesh_axis = None
        if mesh_axis is not None:
            used.add(mesh_axis)
        spec.append(mesh_axis)
    return PartitionSpec(*spec)


def logical_to_sharding(
    variable: nnx.Variable, mesh: Mesh, rules: Mapping[str, str | None] = DEFAULT_RULES
) -> NamedSharding:
    """NamedSharding of one Variable (concrete or abstract) on `mesh`."""
    value = variable.get_value()
    shape = getattr(value, "shape", ())
    return NamedSharding(mesh, logical_to_pspec(logical_axes(variable), shape, mesh, rules))


def state_shardings(tree: Any, mesh: Mesh, rules: Mapping[str, str | None] = DEFAULT_RULES) -> Any:
    """Tree of NamedShardings matching `nnx.state(tree)` (a module, an optimizer, or a State); for jit shardings."""
    state = tree if isinstance(tree, nnx.State) else nnx.state(tree)

    def one(x):
        if isinstance(x, nnx.Variable):
            return x.replace(logical_to_sharding(x, mesh, rules))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model(model: Any, mesh: Mesh, rules: Mapping[str, str | None] = DEFAULT_RULES) -> Any:
    """Places every Variable of `model` (any NNX graph node, e.g. a CausalLM or an nnx.Optimizer) on `mesh` in place
    by its logical axes; returns the same object."""
    state = nnx.state(model)
    shardings = state_shardings(state, mesh, rules)
    placed = jax.tree.map(
        lambda x, s: x.replace(jax.device_put(x.get_value(), s.get_value())) if isinstance(x, nnx.Variable) else x,
        state,
        shardings,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )
    nnx.update(model, placed)
    return model


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding for arrays whose leading axis is the batch: split over ("data", "fsdp"), the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    """A fully replicated sharding on `mesh`."""
    return NamedSharding(mesh, PartitionSpec())
