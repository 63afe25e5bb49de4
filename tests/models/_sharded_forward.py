"""Run in a fresh process with 8 host CPU devices: sharded forward/grad vs single device. Prints one JSON line."""
import os

if "xla_force_host_platform_device_count=8" not in os.environ.get("XLA_FLAGS", ""):  # the test may add flags
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"

import json  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from jax_cat.models import load_hf  # noqa: E402
from jax_cat.sharding import batch_sharding, make_mesh, shard_model  # noqa: E402


def loss_fn(model, ids, mask):
    logits = model(ids, mask)
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    nll = -jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
    return jnp.sum(nll * mask[:, 1:]) / jnp.sum(mask[:, 1:])


def main(ckpt: str) -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 100, size=(4, 12)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[0, :5] = 0
    mask[3, :2] = 0
    single = load_hf(ckpt)
    ref_logits = np.asarray(single(jnp.asarray(ids), jnp.asarray(mask)))
    ref_loss, ref_grads = nnx.value_and_grad(loss_fn)(single, jnp.asarray(ids), jnp.asarray(mask))

    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    results = {"devices": len(jax.devices()), "torch_imported": "torch" in sys.modules,
               "transformers_imported": "transformers" in sys.modules}
    for how in ("shard_model", "load_hf_mesh"):
        model = shard_model(load_hf(ckpt), mesh) if how == "shard_model" else load_hf(ckpt, mesh=mesh)
        graphdef, state = nnx.split(model)

        @jax.jit
        def forward(state, ids, mask):
            return nnx.merge(graphdef, state)(ids, mask)

        @jax.jit
        def grads(state, ids, mask):
            return nnx.value_and_grad(loss_fn)(nnx.merge(graphdef, state), ids, mask)

        x = jax.device_put(jnp.asarray(ids), batch_sharding(mesh))
        m = jax.device_put(jnp.asarray(mask), batch_sharding(mesh))
        logits = forward(state, x, m)
        loss, g = grads(state, x, m)
        grad_diff = max(
            float(jnp.max(jnp.abs(a - b)))
            for a, b in zip(jax.tree.leaves(nnx.state(ref_grads)), jax.tree.leaves(nnx.state(g)))
        )
        attn = model.layers[0].self_attn
        results[how] = {
            "logits_diff": float(np.max(np.abs(np.asarray(logits) - ref_logits)[mask.astype(bool)])),
            "loss_diff": abs(float(loss) - float(ref_loss)),
            "grad_diff": grad_diff,
            "q_proj_spec": list(map(str, attn.q_proj[...].sharding.spec)),
            "o_proj_spec": list(map(str, attn.o_proj[...].sharding.spec)),
            "embed_spec": list(map(str, model.embed_tokens[...].sharding.spec)),
            "q_proj_devices": len(attn.q_proj[...].sharding.device_set),
            "q_proj_shard_shape": list(attn.q_proj[...].addressable_shards[0].data.shape),
        }
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
