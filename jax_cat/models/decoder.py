"""The Llama / Mistral / Qwen2 / Qwen3 decoder as Flax NNX modules, with a static-shape KV cache.

One implementation covers the family: RMSNorm, rotary embeddings (see `rope.py`), grouped-query attention with
optional q/k/v bias (Qwen2), per-head q/k RMSNorm (Qwen3) and per-layer sliding windows (Mistral, Qwen2/3),
SwiGLU MLP, tied or untied lm_head. This file holds `CausalLM` (embedding, the layer stack, the output head, the
cached-decoding entry points); the pieces live one idea a file, and every name is importable from here as well:

- `config.py`: `ModelConfig` (HF config.json fields); `hf_keys.py` / `hf.py`: checkpoint names <-> NNX state.
- `layers.py`: parameters with logical axes, `RMSNorm`, the SwiGLU `MLP`, the LoRA hook, `shard_batch`.
- `attention.py`: `Attention` (GQA, rope, bias, q/k norm), the two kernels, the masks and positions.
- `kv_cache.py`: `KVCache` and how a layer writes it; `layer_stack.py`: `DecoderLayer`, loop vs scan, remat.
- `projection.py`: the vocabulary / MLP matmuls with a CPU-laid-out backward; `rope.py`; `lora.py`.

Precision follows Flax: `param_dtype` is the storage dtype of the parameters (e.g. float32 master weights) and
`dtype` the compute dtype (e.g. bfloat16); parameters are cast to `dtype` where they are used, and logits are
always float32. Two options change how the layers run, not what they compute: `scan_layers=True` stores the
per-layer parameters stacked on a leading "layers" axis and runs the layers under `jax.lax.scan` (compile time
independent of depth; the only layout in which `remat` saves memory on XLA:CPU, see docs/planning.md), and `remat`
rematerialises each layer in the backward pass under a named policy (`REMAT_POLICIES`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jax_cat.models.attention import (  # noqa: F401  (re-exported: importable from here as before the split)
    ATTENTION_IMPLS,
    Attention,
    attention,
    attention_mask_for_slots,
    fused_attention,
    positions_from_mask,
)
from jax_cat.models.config import ModelConfig
from jax_cat.models.kv_cache import KVCache, empty_cache
from jax_cat.models.layer_stack import (  # noqa: F401
    REMAT_POLICIES,
    DecoderLayer,
    _remat_policy_name,
    _stacked_layers,
    distinct_windows,
    run_layer_loop,
    run_layer_scan,
)
from jax_cat.models.layers import MLP, RMSNorm, _normal, _param, shard_batch  # noqa: F401
from jax_cat.models.projection import dense, vocab_logits  # noqa: F401
from jax_cat.models.rope import rope_cos_sin


class CausalLM(nnx.Module):
    """Decoder-only causal LM of the Llama/Mistral/Qwen2/Qwen3 family; logits are float32 whatever the dtype.

    Args:
      config: the model's hyper-parameters.
      rngs: initialisation keys.
      dtype: compute dtype (activations, matmul inputs, default KV-cache dtype).
      param_dtype: storage dtype of the parameters; None (the default) stores them in `dtype`, as before this
        option existed. Use `dtype=jnp.bfloat16, param_dtype=jnp.float32` for bf16 compute on float32 masters.
      remat: rematerialise each layer in the backward pass: False, True (= "full") or a `REMAT_POLICIES` name.
        It only saves memory together with `scan_layers=True` (measured on XLA:CPU; see docs/planning.md).
      scan_layers: store the layers' parameters stacked ([num_layers, ...], logical axis "layers") and run them
        under `jax.lax.scan`. The HF names at load/save are unchanged (`jax_cat.models.hf` stacks and unstacks).
      attention_impl: "xla" (the batched-matmul `attention`) or "dot_product_attention" (`jax.nn.
        dot_product_attention`, which dispatches to cuDNN flash attention on GPUs).
      lora: a `jax_cat.models.lora.LoRAConfig` to add LoRA adapters (float32, B = 0) to its target projections;
        None = none. `model.lora` is the config of the adapters the model holds (None without).
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        param_dtype=None,
        remat: bool | str = False,
        scan_layers: bool = False,
        attention_impl: str = "xla",
        lora=None,
    ):
        if attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl={attention_impl!r}: expected one of {', '.join(ATTENTION_IMPLS)}")
        _remat_policy_name(remat)  # validate now, not at the first call
        self.config = config
        self.dtype = jnp.dtype(dtype)
        self.param_dtype = jnp.dtype(param_dtype or dtype)
        self.remat = remat
        self.scan_layers = bool(scan_layers)
        self.attention_impl = attention_impl
        c = config
        pdt = self.param_dtype
        layer_kw = dict(dtype=self.dtype, param_dtype=pdt, attention_impl=attention_impl)
        self.embed_tokens = _param(rngs, _normal(0.02), (c.vocab_size, c.hidden_size), ("vocab", "embed"), pdt)
        if self.scan_layers:
            self.layers = _stacked_layers(c, rngs, layer_kw)
        else:
            self.layers = nnx.List([DecoderLayer(c, i, rngs=rngs, **layer_kw) for i in range(c.num_hidden_layers)])
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps, dtype=self.dtype, param_dtype=pdt)
        if c.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = _param(rngs, _normal(0.02), (c.hidden_size, c.vocab_size), ("embed", "vocab"), pdt)
        self.lora = None
        if lora is not None:
            from jax_cat.models.lora import add_lora

            add_lora(self, lora)

    # ------------------------------------------------------------------ core
    def _layer_windows(self) -> list[int | None]:
        return [self.config.layer_window(i) for i in range(self.config.num_hidden_layers)]

    def _windows(self) -> list[int | None]:
        return distinct_windows(self._layer_windows())

    def _run_layers(self, x, positions, query_slots, kv_mask, cache: KVCache | None, cache_index,
                    prefill: bool = False):
        """Rotary tables and masks once, then every layer (loop or scan, `layer_stack.py`) and the final norm."""
        cos, sin = rope_cos_sin(self.config, positions)
        masks = {w: attention_mask_for_slots(query_slots, kv_mask, w) for w in self._windows()}
        policy_name = _remat_policy_name(self.remat) if cache is None else None
        run = run_layer_scan if self.scan_layers else run_layer_loop
        x, new_cache = run(self.layers, self._layer_windows(), x, cos, sin, masks, cache, cache_index, policy_name,
                           prefill)
        return self.norm(x), new_cache

    def embed(self, input_ids: jax.Array) -> jax.Array:
        """Token embeddings [B, T, hidden] in the compute dtype."""
        return shard_batch(jnp.take(self.embed_tokens[...], input_ids, axis=0).astype(self.dtype))

    def logits_from_hidden(self, hidden: jax.Array) -> jax.Array:
        """Final-norm hidden states [..., hidden] -> float32 logits [..., vocab]."""
        hidden = hidden.astype(self.dtype)
        if self.lm_head is None:  # vocab_logits: einsum "...d,vd->...v" / "...d,dv->...v", backward laid out for CPU
            return vocab_logits(hidden, self.embed_tokens[...].astype(self.dtype), tied=True)
        return vocab_logits(hidden, self.lm_head[...].astype(self.dtype), tied=False)

    def token_logprobs_from_hidden(
        self, hidden: jax.Array, targets: jax.Array, *, chunk_size: int | None = 1024
    ) -> jax.Array:
        """log p(targets) [B, T] (float32) from final-norm hidden states [B, T, hidden], without [B, T, vocab] arrays.

        The vocabulary projection and log-softmax run over `chunk_size` positions at a time under `jax.checkpoint`,
        so neither the forward nor the backward pass holds more than one chunk's [chunk_size, vocab] logits (the
        plain route keeps the logits, their softmax and their gradient: three [B, T, vocab] float32 arrays, 15 GiB
        at B=8, T=1024 on Qwen's 152k vocabulary). `chunk_size=None` computes it in one piece.
        """
        b, t, d = hidden.shape
        targets = jnp.asarray(targets, jnp.int32)

        def logprobs(h, y):
            logits = self.logits_from_hidden(h)
            return jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0] - jax.nn.logsumexp(logits, axis=-1)

        n = b * t
        if chunk_size is None or chunk_size >= n:
            return logprobs(hidden, targets)
        chunks = -(-n // chunk_size)
        pad = chunks * chunk_size - n
        h = jnp.pad(hidden.reshape(n, d), ((0, pad), (0, 0))).reshape(chunks, chunk_size, d)
        y = jnp.pad(targets.reshape(n), (0, pad)).reshape(chunks, chunk_size)
        out = jax.lax.map(lambda hy: jax.checkpoint(logprobs)(*hy), (h, y))
        return out.reshape(-1)[:n].reshape(b, t)

    def hidden_states(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """Final-norm hidden states [B, T, hidden] (for losses that chunk the vocab projection)."""
        input_ids = jnp.asarray(input_ids, jnp.int32)
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, bool)
        attention_mask = jnp.asarray(attention_mask).astype(bool)
        positions = positions_from_mask(attention_mask)
        slots = jnp.arange(input_ids.shape[1])
        hidden, _ = self._run_layers(self.embed(input_ids), positions, slots, attention_mask, None, None)
        return hidden

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """Logits [B, T, vocab] (float32); left padding handled via attention_mask (1 = real token)."""
        return self.logits_from_hidden(self.hidden_states(input_ids, attention_mask))

    # ------------------------------------------------------------------ cached decoding
    def init_cache(self, batch_size: int, max_len: int, dtype=None) -> KVCache:
        """An all-zero KV cache for `batch_size` rows of up to `max_len` slots (dtype defaults to the compute dtype).

        Each layer's K and V buffer is [batch_size, num_kv_heads, max_len, head_dim]; a `scan_layers` model gets
        them stacked into one [batch_size, num_layers, num_kv_heads, max_len, head_dim] array (see `KVCache`).
        """
        dtype = self.dtype if dtype is None else dtype
        return empty_cache(self.config, batch_size, max_len, dtype, stacked=self.scan_layers)

    def forward_cached(
        self,
        input_ids: jax.Array,
        positions: jax.Array,
        cache: KVCache,
        cache_index: jax.Array | int,
        kv_mask: jax.Array,
    ) -> tuple[jax.Array, KVCache]:
        """Runs T new tokens written to cache slots [cache_index, cache_index + T); returns (logits, new cache).

        The query in slot s sees key slot j iff j <= s and kv_mask[b, j] (and s - j < window on sliding layers).
        kv_mask[B, max_len] must already be True for the new slots holding real tokens.
        """
        input_ids = jnp.asarray(input_ids, jnp.int32)
        cache_index = jnp.asarray(cache_index, jnp.int32)
        query_slots = cache_index + jnp.arange(input_ids.shape[1], dtype=jnp.int32)
        hidden, new_cache = self._run_layers(
            self.embed(input_ids), jnp.asarray(positions, jnp.int32), query_slots, jnp.asarray(kv_mask).astype(bool),
            cache, cache_index,
        )
        return self.logits_from_hidden(hidden), new_cache

    def prefill(
        self,
        input_ids: jax.Array,
        positions: jax.Array,
        cache: KVCache,
        prompt_mask: jax.Array,
        *,
        chunk_size: int = 256,
    ) -> KVCache:
        """Writes a prompt's keys/values [B, T] into cache slots [0, T) and returns the cache (no logits).

        The same cache as `forward_cached(input_ids, positions, cache, 0, kv_mask)` with kv_mask True on the
        prompt's real tokens, at a fraction of the memory: the prompt runs through the layers `chunk_size` tokens at
        a time (at least T / 8), each block attending to the slots written so far (not to the cache's max_len), and
        no vocabulary projection is computed. The largest temporaries are then [B, heads, chunk, T] scores and
        [B, chunk, intermediate] activations instead of [B, heads, T, max_len] and [B, T, intermediate] (the
        sampler's long-context peak; docs/benchmarks.md, "Sampling"). `prompt_mask` [B, T]: True on real tokens.
        """
        input_ids = jnp.asarray(input_ids, jnp.int32)
        positions = jnp.asarray(positions, jnp.int32)
        prompt_mask = jnp.asarray(prompt_mask).astype(bool)
        t = input_ids.shape[1]
        if t > cache.max_len:
            raise ValueError(f"prefill: {t} prompt tokens do not fit a KV cache of {cache.max_len} slots")
        if chunk_size < 1:
            raise ValueError(f"prefill: chunk_size must be >= 1, got {chunk_size}")
        chunk = max(int(chunk_size), -(-t // 8))  # at most 8 blocks: each is unrolled in the compiled program
        for start in range(0, t, chunk):
            end = min(start + chunk, t)
            _, cache = self._run_layers(
                self.embed(input_ids[:, start:end]), positions[:, start:end], jnp.arange(start, end, dtype=jnp.int32),
                prompt_mask[:, :end], cache, start, prefill=True,
            )
        return cache

    @property
    def num_params(self) -> int:
        """Number of parameters (tied embeddings counted once)."""
        return sum(x.size for x in jax.tree.leaves(nnx.state(self, nnx.Param)))
