"""Each fast path / precision option of CausalLM against the plain model: same logits and gradients.

References: the plain per-layer float32 model (itself checked against transformers in test_parity) and, for the
stacked layout, the HF checkpoint itself (load -> save must give back the same tensors).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from jax_cat.models import load_hf, save_hf
from tests.models._reference import left_padded_batch, max_abs_diff_on_real_tokens

VARIANTS = {
    "scan": dict(scan_layers=True),
    "scan_remat_full": dict(scan_layers=True, remat=True),
    "loop_remat_dots": dict(remat="dots"),
    "scan_dot_product_attention": dict(scan_layers=True, attention_impl="dot_product_attention"),
}
GRAD_TOL = 1e-5  # float32: |fast - plain| <= GRAD_TOL * max |plain| of each tensor


def _logits_loss_grads(model, ids, mask):
    """Logits, and the sum of real-token logits weighted by a fixed random tensor with its gradient w.r.t. every
    HF tensor (one jitted call)."""
    graphdef, state = nnx.split(model)
    weights = jax.random.normal(jax.random.key(0), (*ids.shape, model.config.vocab_size))

    def loss(s):
        logits = nnx.merge(graphdef, s)(jnp.asarray(ids), jnp.asarray(mask))
        return jnp.sum(logits * weights * mask[..., None]), logits

    (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(state)
    return np.asarray(logits), float(value), dict(_hf_named(nnx.merge(graphdef, grads)))


def _hf_named(model):
    from jax_cat.models.hf import iter_hf_tensors

    return iter_hf_tensors(model)


@pytest.fixture(scope="module")
def qwen3_sliding(tiny_hf_checkpoint):
    """Qwen3 (q/k norm) with one sliding and one full layer, so the scan picks per-layer masks."""
    return tiny_hf_checkpoint(
        "qwen3", use_sliding_window=True, sliding_window=3, max_window_layers=1,
        layer_types=["full_attention", "sliding_attention"],
    )


@pytest.fixture(scope="module")
def plain_reference(qwen3_sliding):
    ids, mask = left_padded_batch(128, lengths=(9, 5, 2))
    return ids, mask, *_logits_loss_grads(load_hf(qwen3_sliding), ids, mask)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_fast_path_logits_and_grads_equal_plain(qwen3_sliding, plain_reference, variant):
    ids, mask, plain_logits, plain_loss, plain_grads = plain_reference
    fast_logits, fast_loss, fast_grads = _logits_loss_grads(load_hf(qwen3_sliding, **VARIANTS[variant]), ids, mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(fast_logits[real], plain_logits[real], atol=1e-5)
    assert abs(fast_loss - plain_loss) <= 1e-5 * abs(plain_loss)
    assert plain_grads.keys() == fast_grads.keys()
    for name, g in plain_grads.items():
        scale = float(np.abs(g).max())
        assert scale > 1e-3, name  # every tensor's gradient is non-trivial, so the bound means something
        assert float(np.abs(fast_grads[name] - g).max()) <= GRAD_TOL * scale, name


def test_scan_layers_stacks_parameters_and_saves_the_same_checkpoint(tiny_hf_checkpoint, tmp_path):
    path = tiny_hf_checkpoint("qwen2")
    model = load_hf(path, scan_layers=True)
    q = model.layers.self_attn.q_proj
    assert q[...].shape == (2, 64, 4, 16)
    assert q.get_metadata()["out_sharding"] == ("layers", "embed", "heads", "head_dim")
    save_hf(model, tmp_path / "out")
    original, saved = load_file(str(path / "model.safetensors")), load_file(str(tmp_path / "out" / "model.safetensors"))
    assert saved.keys() == original.keys()
    for name, tensor in original.items():
        np.testing.assert_array_equal(saved[name], tensor, err_msg=name)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_cached_decode_equals_full_forward(qwen3_sliding, scan_layers):
    model = load_hf(qwen3_sliding, scan_layers=scan_layers)
    ids, mask = left_padded_batch(128, lengths=(7, 4), seed=1)
    graphdef, state = nnx.split(model)
    full = np.asarray(jax.jit(lambda s, *a: nnx.merge(graphdef, s)(*a))(state, ids, mask))
    total, prompt_len = ids.shape[1], 3
    step = jax.jit(lambda s, *a: nnx.merge(graphdef, s).forward_cached(*a))
    positions = np.maximum(np.cumsum(mask, axis=-1) - 1, 0).astype(np.int32)
    kv_mask = np.zeros((ids.shape[0], total + 1), bool)
    kv_mask[:, :prompt_len] = mask[:, :prompt_len]
    cache = model.init_cache(ids.shape[0], total + 1)
    assert cache.stacked == scan_layers and (cache.batch_size, cache.max_len) == (2, total + 1)
    logits, cache = step(state, ids[:, :prompt_len], positions[:, :prompt_len], cache, jnp.int32(0), kv_mask)
    got = [np.asarray(logits)]
    for t in range(prompt_len, total):
        kv_mask[:, t] = mask[:, t]
        logits, cache = step(state, ids[:, t : t + 1], positions[:, t : t + 1], cache, jnp.int32(t), kv_mask)
        got.append(np.asarray(logits))
    assert max_abs_diff_on_real_tokens(np.concatenate(got, axis=1), full, mask) <= 1e-5


def test_bf16_compute_on_float32_params(qwen3_sliding, plain_reference):
    """param_dtype float32 + dtype bfloat16: float32 storage, bf16 math, logits within bf16 tolerance of float32."""
    ids, mask, ref, _, _ = plain_reference
    mixed = load_hf(qwen3_sliding, dtype=jnp.bfloat16, param_dtype=jnp.float32)
    assert {x.dtype for x in jax.tree.leaves(nnx.state(mixed, nnx.Param))} == {jnp.dtype(jnp.float32)}
    assert mixed.init_cache(1, 4).k[0].dtype == jnp.bfloat16  # the cache follows the compute dtype
    graphdef, state = nnx.split(mixed)
    forward = lambda s: nnx.merge(graphdef, s)(jnp.asarray(ids), jnp.asarray(mask))
    assert "bf16[3,9,4,16]" in str(jax.make_jaxpr(forward)(state))  # the queries really are computed in bf16
    loss = lambda s: (jnp.sum(forward(s) * mask[..., None]), forward(s))
    (_, got), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(state)
    got = np.asarray(got)
    assert got.dtype == np.float32
    real = mask.astype(bool)
    scale = np.abs(ref[real]).max()
    err = np.abs(got[real] - ref[real]).max()
    assert 1e-4 * scale < err <= 0.05 * scale  # bf16 rounding shows (it is not float32 math), within bf16 tolerance
    # gradients come back in the storage dtype, ready for a float32 optimizer
    assert {x.dtype for x in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}


def test_bad_options_are_named():
    from jax_cat.models import CausalLM
    from jax_cat.models.tiny import tiny_model_config

    with pytest.raises(ValueError, match="remat='sometimes'"):
        CausalLM(tiny_model_config(), rngs=nnx.Rngs(0), remat="sometimes")
    with pytest.raises(ValueError, match="attention_impl='flash'"):
        CausalLM(tiny_model_config(), rngs=nnx.Rngs(0), attention_impl="flash")


def test_chunked_token_logprobs_equal_log_softmax(tiny_hf_checkpoint):
    """Chunked vocabulary projection (no [B, T, V] arrays) = log_softmax(logits)[target], values and gradients
    (w.r.t. the hidden states and the lm_head)."""
    model = load_hf(tiny_hf_checkpoint("llama"))
    hidden = jax.random.normal(jax.random.key(1), (3, 9, model.config.hidden_size))
    targets = jnp.asarray(jax.random.randint(jax.random.key(2), (3, 9), 0, model.config.vocab_size))
    mask = jnp.asarray(left_padded_batch(128, lengths=(9, 5, 2))[1])
    graphdef, state = nnx.split(model)

    def loss(s, h, chunk_size):
        m = nnx.merge(graphdef, s)
        if chunk_size == 0:  # the plain route: full logits, then log-softmax
            logp = jnp.take_along_axis(jax.nn.log_softmax(m.logits_from_hidden(h)), targets[..., None], -1)[..., 0]
        else:
            logp = m.token_logprobs_from_hidden(h, targets, chunk_size=chunk_size)
        return jnp.sum(logp * mask), logp

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True), static_argnums=2)
    (plain, plain_lp), plain_g = grad(state, hidden, 0)
    (chunked, chunked_lp), chunked_g = grad(state, hidden, 5)  # 27 positions: 6 chunks, the last one padded
    np.testing.assert_allclose(np.asarray(chunked_lp), np.asarray(plain_lp), atol=1e-5)
    assert abs(float(chunked) - float(plain)) <= 1e-5 * abs(float(plain))
    assert float(jnp.abs(plain_g[1]).max()) > 1e-2
    for a, b in zip(jax.tree.leaves(chunked_g), jax.tree.leaves(plain_g)):
        assert float(jnp.abs(a - b).max()) <= 1e-5 * max(float(jnp.abs(b).max()), 1e-30)


def test_activations_split_by_batch_under_a_mesh(tiny_hf_checkpoint):
    """Under jax.set_mesh, the scanned model keeps hidden states batch-sharded (FSDP) and computes the same logits."""
    from jax_cat.sharding import batch_sharding, make_mesh, shard_model

    path = tiny_hf_checkpoint("qwen2")
    ids, mask = left_padded_batch(128, lengths=(6, 5, 4, 3, 6, 2, 1, 6))
    ref = np.asarray(load_hf(path)(jnp.asarray(ids), jnp.asarray(mask)))
    mesh = make_mesh(data=2, fsdp=4, tensor=1)
    model = shard_model(load_hf(path, scan_layers=True), mesh)
    graphdef, state = nnx.split(model)
    hidden_fn = jax.jit(lambda s, i, m: nnx.merge(graphdef, s).hidden_states(i, m))
    with jax.set_mesh(mesh):
        args = [jax.device_put(jnp.asarray(x), batch_sharding(mesh)) for x in (ids, mask)]
        hidden = hidden_fn(state, *args)
        logits = jax.jit(lambda s, h: nnx.merge(graphdef, s).logits_from_hidden(h))(state, hidden)
    assert hidden.sharding.spec[0] == ("data", "fsdp")
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(logits)[real], ref[real], atol=1e-5)


def test_sampler_runs_a_scanned_model_to_the_same_tokens(tiny_hf_checkpoint):
    """sample_tokens on a scan_layers model (stacked KV cache, shared prefill copied per sample) = the layer loop's."""
    from jax_cat.sampling import sample_tokens

    path = tiny_hf_checkpoint("qwen2")
    ids, mask = left_padded_batch(128, lengths=(6, 3), seed=2)
    outs = [
        sample_tokens(load_hf(path, scan_layers=scan), ids, mask, max_new_tokens=5, key=jax.random.key(3),
                      temperature=0.7, group_ids=np.array([0, 0, 1]))
        for scan in (False, True)
    ]
    np.testing.assert_array_equal(np.asarray(outs[1].tokens), np.asarray(outs[0].tokens))
    np.testing.assert_allclose(np.asarray(outs[1].logprobs), np.asarray(outs[0].logprobs), atol=1e-5)
