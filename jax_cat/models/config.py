"""ModelConfig: the decoder-family hyper-parameters, read from / written to a Hugging Face config.json.

Field names follow transformers. `from_hf` parses config.json itself (no transformers / torch import on the load
path) with transformers' per-model-type defaults, both spellings (4.x `rope_theta`/`rope_scaling`/`torch_dtype`,
5.x `rope_parameters`/`dtype`) and the per-layer sliding-window rules (`use_sliding_window`, `max_window_layers`,
`layer_types`); tests check it agrees with transformers' own config classes.
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
        """The RoPE variant that sets the frequencies: rope_scaling's `rope_type` (or 4.x `type`), else "default"."""
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
        """Builds a ModelConfig from a config.json dict (4.x or 5.x spelling) or a transformers PretrainedConfig.

        Parsed here (no transformers import, hence no torch import), with transformers' defaults and rules for each
        model type; tests check the result equals what transformers' own config classes resolve.
        """
        if not isinstance(config, Mapping):
            config = config.to_dict()
        d = copy.deepcopy(dict(config))
        model_type = d.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"unsupported model_type {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
        defaults = _HF_DEFAULTS[model_type]

        def get(key: str) -> Any:
            value = d.get(key, defaults.get(key))
            return defaults.get(key) if value is None and key in _NOT_NULLABLE else value

        num_heads = get("num_attention_heads")
        head_dim = get("head_dim") or get("hidden_size") // num_heads
        num_kv = get("num_key_value_heads") or num_heads
        max_pos = get("max_position_embeddings")
        rope_theta, rope_scaling = _parse_rope(d, max_pos)

        sliding_window, layer_types, max_window_layers = None, None, None
        if model_type == "mistral":
            sliding_window = get("sliding_window")
        elif model_type in ("qwen2", "qwen3"):
            max_window_layers = get("max_window_layers")
            sliding_window = get("sliding_window") if get("use_sliding_window") else None
            layer_types = d.get("layer_types")
            if layer_types is None:
                layer_types = [
                    "sliding_attention" if sliding_window is not None and i >= max_window_layers else "full_attention"
                    for i in range(get("num_hidden_layers"))
                ]
            if sliding_window is None:
                layer_types = None

        attention_bias = bool(get("attention_bias"))
        if model_type == "qwen2":
            qkv_bias, o_bias = True, False
        elif model_type == "mistral":
            qkv_bias, o_bias = False, False
        else:
            qkv_bias, o_bias = attention_bias, attention_bias
        return cls(
            vocab_size=get("vocab_size"),
            hidden_size=get("hidden_size"),
            intermediate_size=get("intermediate_size"),
            num_hidden_layers=get("num_hidden_layers"),
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv,
            head_dim=head_dim,
            rms_norm_eps=float(get("rms_norm_eps")),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=max_pos,
            tie_word_embeddings=bool(get("tie_word_embeddings")),
            attention_bias=qkv_bias,
            use_qk_norm=model_type == "qwen3",
            sliding_window=sliding_window,
            model_type=model_type,
            bos_token_id=get("bos_token_id"),
            eos_token_id=get("eos_token_id"),
            pad_token_id=get("pad_token_id"),
            o_proj_bias=o_bias,
            mlp_bias=bool(get("mlp_bias")) if model_type == "llama" else False,
            layer_types=tuple(layer_types) if layer_types is not None else None,
            max_window_layers=max_window_layers,
            hidden_act=get("hidden_act"),
        )

    def to_hf_dict(self, dtype: str = "float32") -> dict[str, Any]:
        """A config.json dict for this model type that transformers 4.x and 5.x both read the same way.

        Both spellings are written: `rope_parameters` + `dtype` (5.x) and top-level `rope_theta`, `rope_scaling`
        (None for the default rope) + `torch_dtype` (4.x). Why: a 4.x reader ignores `rope_parameters` and would
        silently fall back to rope_theta 10000 (Qwen2.5 uses 1e6: logits off by ~0.5).
        """
        self._check_representable()
        out: dict[str, Any] = dict(
            architectures=[_ARCHITECTURES[self.model_type]],
            model_type=self.model_type,
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            hidden_act=self.hidden_act,
            max_position_embeddings=self.max_position_embeddings,
            rms_norm_eps=self.rms_norm_eps,
            rope_parameters={"rope_theta": self.rope_theta, "rope_type": "default", **_thaw(self.rope_scaling or {})},
            rope_theta=self.rope_theta,
            rope_scaling=_thaw(self.rope_scaling) if self.rope_scaling else None,
            tie_word_embeddings=self.tie_word_embeddings,
            bos_token_id=self.bos_token_id,
            eos_token_id=_thaw(self.eos_token_id),
            pad_token_id=self.pad_token_id,
            attention_dropout=0.0,
            initializer_range=0.02,
            use_cache=True,
            dtype=dtype,
            torch_dtype=dtype,
        )
        if self.model_type in ("llama", "qwen3"):
            out["attention_bias"] = self.attention_bias
        if self.model_type == "llama":
            out["mlp_bias"] = self.mlp_bias
        if self.model_type == "mistral":
            out["sliding_window"] = self.sliding_window
        elif self.model_type in ("qwen2", "qwen3"):
            out["use_sliding_window"] = self.sliding_window is not None
            out["sliding_window"] = self.sliding_window
            out["max_window_layers"] = (
                self.max_window_layers if self.max_window_layers is not None else _HF_DEFAULTS["qwen2"]["max_window_layers"]
            )
            out["layer_types"] = list(self.layer_types or ("full_attention",) * self.num_hidden_layers)
        try:
            from importlib.metadata import version

            out["transformers_version"] = version("transformers")
        except Exception:  # transformers not installed: the field is informative only
            pass
        return out

    def to_hf_config(self, dtype: str = "float32") -> Any:
        """The equivalent transformers PretrainedConfig (imports transformers)."""
        import transformers

        data = self.to_hf_dict(dtype)
        data.pop("transformers_version", None)
        return transformers.AutoConfig.for_model(data.pop("model_type"), **data)

    def _check_representable(self) -> None:
        """Raises if this config has a bias layout the model type's transformers class cannot express."""
        t = self.model_type
        if t in ("llama", "qwen3") and self.attention_bias != self.o_proj_bias:
            raise ValueError(f"{t} has one attention_bias for q/k/v and o; got different values")
        if t == "qwen2" and (not self.attention_bias or self.o_proj_bias):
            raise ValueError("qwen2 always has q/k/v bias and no o_proj bias")
        if t == "mistral" and (self.attention_bias or self.o_proj_bias):
            raise ValueError("mistral has no attention biases")
        if t != "llama" and self.mlp_bias:
            raise ValueError(f"{t} has no mlp bias")
        if t != "qwen3" and self.use_qk_norm or t == "qwen3" and not self.use_qk_norm:
            raise ValueError("q/k norm is used by qwen3 and only by qwen3")


# transformers 5.23 defaults for the fields we read (the config classes' dataclass defaults)
_COMMON_DEFAULTS: dict[str, Any] = dict(
    hidden_act="silu", rms_norm_eps=1e-6, tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
    head_dim=None, pad_token_id=None,
)
_HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": dict(
        _COMMON_DEFAULTS, vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=None, max_position_embeddings=2048, bos_token_id=1, eos_token_id=2,
    ),
    "mistral": dict(
        _COMMON_DEFAULTS, vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096 * 32, bos_token_id=1,
        eos_token_id=2, sliding_window=4096,
    ),
    "qwen2": dict(
        _COMMON_DEFAULTS, vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=32768, bos_token_id=None,
        eos_token_id=None, use_sliding_window=False, sliding_window=4096, max_window_layers=28,
    ),
    "qwen3": dict(
        _COMMON_DEFAULTS, vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, head_dim=128, max_position_embeddings=32768,
        bos_token_id=None, eos_token_id=None, use_sliding_window=False, sliding_window=4096, max_window_layers=28,
    ),
}
_NOT_NULLABLE = frozenset(
    {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
     "max_position_embeddings", "rms_norm_eps", "hidden_act", "max_window_layers"}
)
_DEFAULT_ROPE_THETA = 10000.0


def _parse_rope(d: dict[str, Any], max_position_embeddings: int) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling-without-theta or None) from 4.x (`rope_theta`/`rope_scaling`) or 5.x
    (`rope_parameters`) spellings, with transformers' defaulting of original_max_position_embeddings."""
    params = dict(d.get("rope_scaling") or d.get("rope_parameters") or {})
    if d.get("partial_rotary_factor", params.get("partial_rotary_factor", 1.0)) not in (None, 1.0):
        raise ValueError("partial_rotary_factor != 1 is not supported")
    rope_theta = params.pop("rope_theta", None)
    if rope_theta is None:
        rope_theta = d.get("rope_theta") or _DEFAULT_ROPE_THETA
    rope_type = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    params.pop("partial_rotary_factor", None)
    if rope_type == "default":
        return float(rope_theta), None
    if rope_type in ("llama3", "yarn", "longrope"):
        if "original_max_position_embeddings" in d:
            params["original_max_position_embeddings"] = d["original_max_position_embeddings"]
        else:
            params.setdefault("original_max_position_embeddings", max_position_embeddings)
    return float(rope_theta), {"rope_type": rope_type, **params}
