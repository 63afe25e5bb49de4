"""ModelConfig: the decoder-family hyper-parameters, read from / written to a Hugging Face config.json.

Field names follow transformers. `from_hf` goes through transformers' own config class for the model type, so
defaults, the 4.x spellings (`rope_theta`, `rope_scaling`, `torch_dtype`) and the per-layer sliding-window rules
(`use_sliding_window`, `max_window_layers`, `layer_types`) are resolved exactly as transformers resolves them.
"""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

SUPPORTED_MODEL_TYPES: tuple[str, ...] = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED_ROPE_TYPES: tuple[str, ...] = ("default", "linear", "dynamic", "yarn", "llama3")

_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}


def _freeze(value: Any) -> Any:
    """Recursively turns lists into tuples and dicts into hashable FrozenDicts."""
    if isinstance(value, Mapping):
        return FrozenDict({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    """Inverse of `_freeze`, for JSON output."""
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


class FrozenDict(dict):
    """A read-only, hashable dict (so a config can sit in an NNX graphdef / jit cache key)."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))

    def _readonly(self, *args, **kwargs):
        raise TypeError("ModelConfig.rope_scaling is read-only; use dataclasses.replace on the config")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _readonly  # type: ignore[assignment]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a Llama / Mistral / Qwen2 / Qwen3 decoder (HF field names)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: Mapping[str, Any] | None = None  # rope_parameters without rope_theta; None = default rope
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # bias on q/k/v projections
    use_qk_norm: bool = False  # per-head RMSNorm on q and k (Qwen3)
    sliding_window: int | None = None  # window size of the layers whose layer_types entry is "sliding_attention"
    model_type: str = "llama"
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    # Additions beyond the contract (all with transformers semantics):
    o_proj_bias: bool = False  # llama/qwen3: = attention_bias; qwen2: False
    mlp_bias: bool = False  # llama only
    layer_types: tuple[str, ...] | None = None  # per layer "full_attention" / "sliding_attention"; None = all full
    max_window_layers: int | None = None  # qwen2/qwen3 bookkeeping, kept for a faithful config.json round trip
    hidden_act: str = "silu"

    def __post_init__(self) -> None:
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"unsupported model_type {self.model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        if self.hidden_act not in ("silu", "swish"):
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r}; only 'silu' (SwiGLU) is implemented")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        object.__setattr__(self, "rope_scaling", _freeze(self.rope_scaling) if self.rope_scaling else None)
        if self.rope_scaling is not None:
            rope_type = self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default"))
            if rope_type not in SUPPORTED_ROPE_TYPES:
                raise ValueError(f"unsupported rope_type {rope_type!r}; supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
        if isinstance(self.eos_token_id, list | tuple):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        if self.layer_types is not None:
            layer_types = tuple(self.layer_types)
            if len(layer_types) != self.num_hidden_layers:
                raise ValueError(f"layer_types has {len(layer_types)} entries for {self.num_hidden_layers} layers")
            bad = sorted(set(layer_types) - {"full_attention", "sliding_attention"})
            if bad:
                raise ValueError(f"unsupported layer_types {bad}; supported: full_attention, sliding_attention")
            object.__setattr__(self, "layer_types", layer_types)

    # ------------------------------------------------------------------ derived
    @property
    def rope_type(self) -> str:
        if not self.rope_scaling:
            return "default"
        return self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default"))

    def layer_window(self, layer: int) -> int | None:
        """The sliding window of layer `layer` (None = full causal attention), as transformers applies it."""
        if self.sliding_window is None:
            return None
        if self.layer_types is None:  # mistral: every layer slides
            return self.sliding_window
        return self.sliding_window if self.layer_types[layer] == "sliding_attention" else None

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """eos_token_id as a (possibly empty) tuple."""
        if self.eos_token_id is None:
            return ()
        return self.eos_token_id if isinstance(self.eos_token_id, tuple) else (self.eos_token_id,)

    # ------------------------------------------------------------------ HF conversion
    @classmethod
    def from_hf(cls, config: Mapping[str, Any] | Any) -> ModelConfig:
        """Builds a ModelConfig from a config.json dict (4.x or 5.x spelling) or a transformers PretrainedConfig."""
        hf = _to_transformers_config(config)
        model_type = hf.model_type
        rope_params = dict(getattr(hf, "rope_parameters", None) or {})
        rope_theta = float(rope_params.pop("rope_theta", getattr(hf, "rope_theta", None) or 10000.0))
        rope_type = rope_params.pop("rope_type", rope_params.pop("type", "default"))
        rope_params.pop("type", None)
        rope_scaling = None if rope_type == "default" else {"rope_type": rope_type, **rope_params}
        num_heads = hf.num_attention_heads
        head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // num_heads
        num_kv = getattr(hf, "num_key_value_heads", None) or num_heads

        sliding_window = getattr(hf, "sliding_window", None)
        layer_types = getattr(hf, "layer_types", None)
        if model_type == "llama":
            sliding_window, layer_types = None, None
        elif model_type == "mistral":
            layer_types = None  # MistralModel applies its window (if any) on every layer
        if sliding_window is None:
            layer_types = None

        attention_bias = bool(getattr(hf, "attention_bias", False))
        if model_type == "qwen2":
            qkv_bias, o_bias = True, False
        elif model_type == "mistral":
            qkv_bias, o_bias = False, False
        else:
            qkv_bias, o_bias = attention_bias, attention_bias
        return cls(
            vocab_size=hf.vocab_size,
            hidden_size=hf.hidden_size,
            intermediate_size=hf.intermediate_size,
            num_hidden_layers=hf.num_hidden_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv,
            head_dim=head_dim,
            rms_norm_eps=float(hf.rms_norm_eps),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=hf.max_position_embeddings,
            tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
            attention_bias=qkv_bias,
            use_qk_norm=model_type == "qwen3",
            sliding_window=sliding_window,
            model_type=model_type,
            bos_token_id=getattr(hf, "bos_token_id", None),
            eos_token_id=getattr(hf, "eos_token_id", None),
            pad_token_id=getattr(hf, "pad_token_id", None),
            o_proj_bias=o_bias,
            mlp_bias=bool(getattr(hf, "mlp_bias", False)) if model_type == "llama" else False,
            layer_types=tuple(layer_types) if layer_types is not None else None,
            max_window_layers=getattr(hf, "max_window_layers", None) if model_type in ("qwen2", "qwen3") else None,
            hidden_act=getattr(hf, "hidden_act", "silu"),
        )

    def to_hf_config(self, dtype: str = "float32") -> Any:
        """The equivalent transformers PretrainedConfig (for save_hf and for building reference torch models)."""
        import transformers

        kwargs: dict[str, Any] = dict(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            rms_norm_eps=self.rms_norm_eps,
            rope_parameters={"rope_theta": self.rope_theta, "rope_type": "default", **_thaw(self.rope_scaling or {})},
            max_position_embeddings=self.max_position_embeddings,
            tie_word_embeddings=self.tie_word_embeddings,
            bos_token_id=self.bos_token_id,
            eos_token_id=list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id,
            pad_token_id=self.pad_token_id,
            hidden_act=self.hidden_act,
            architectures=[_ARCHITECTURES[self.model_type]],
            dtype=dtype,
        )
        if self.model_type == "llama":
            if self.attention_bias != self.o_proj_bias:
                raise ValueError("llama has one attention_bias for q/k/v and o; got different values")
            kwargs.update(attention_bias=self.attention_bias, mlp_bias=self.mlp_bias)
        elif self.model_type == "qwen3":
            if self.attention_bias != self.o_proj_bias:
                raise ValueError("qwen3 has one attention_bias for q/k/v and o; got different values")
            kwargs["attention_bias"] = self.attention_bias
        elif self.model_type == "qwen2" and (not self.attention_bias or self.o_proj_bias):
            raise ValueError("qwen2 always has q/k/v bias and no o_proj bias")
        elif self.model_type == "mistral" and (self.attention_bias or self.o_proj_bias):
            raise ValueError("mistral has no attention biases")
        if self.model_type == "mistral":
            kwargs["sliding_window"] = self.sliding_window
        elif self.model_type in ("qwen2", "qwen3"):
            kwargs["use_sliding_window"] = self.sliding_window is not None
            kwargs["sliding_window"] = self.sliding_window
            if self.max_window_layers is not None:
                kwargs["max_window_layers"] = self.max_window_layers
            layer_types = self.layer_types or ("full_attention",) * self.num_hidden_layers
            kwargs["layer_types"] = list(layer_types)
        return transformers.AutoConfig.for_model(self.model_type, **kwargs)

    def to_hf_dict(self, dtype: str = "float32") -> dict[str, Any]:
        """A config.json dict in transformers-5 spelling (`rope_parameters`, `dtype`)."""
        return self.to_hf_config(dtype).to_dict()


def _to_transformers_config(config: Mapping[str, Any] | Any) -> Any:
    """Normalises a dict or PretrainedConfig into transformers' config object for its model type."""
    import transformers

    if isinstance(config, Mapping):
        data = copy.deepcopy(dict(config))  # transformers fills rope dicts in place
        model_type = data.pop("model_type", None)
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"unsupported model_type {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        for key in ("transformers_version", "_name_or_path"):
            data.pop(key, None)
        return transformers.AutoConfig.for_model(model_type, **data)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"unsupported model_type {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    return config
