"""The offline default model: a char-level tokenizer and a tiny random HF-format checkpoint built locally.

Nothing here touches the network or torch: the checkpoint is written by `save_hf` from a freshly initialised
`CausalLM`, so the project runs (and its tests build fixtures) on a machine with no hub access.
"""
from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Any

import jax.numpy as jnp
from flax import nnx

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
# Plain role prefixes (no extra special tokens): works for any char-level model and is easy to read in logs.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ message['role'] }}: {{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)



def cache_dir() -> Path:
    """The user cache folder: $JAX_CAT_CACHE, else $XDG_CACHE_HOME/jax-cat, else ~/.cache/jax-cat (read at call time)."""
    if os.environ.get("JAX_CAT_CACHE"):
        return Path(os.environ["JAX_CAT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "jax-cat"


def default_checkpoint_dir() -> Path:
    """Where the main job and `--model tiny` keep the default checkpoint: <cache_dir()>/tiny-default."""
    return cache_dir() / "tiny-default"


DEFAULT_CHECKPOINT = default_checkpoint_dir()  # as resolved at import; `default_checkpoint_dir()` follows the env

DEFAULT_TINY_CONFIG: dict[str, Any] = dict(
    model_type="qwen2",
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    max_position_embeddings=512,
    tie_word_embeddings=True,
    attention_bias=True,
)


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-unicode map (what a ByteLevel pre-tokenizer emits)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    mapping, shifted = {}, 0
    for byte in range(256):
        if byte in kept:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + shifted)
            shifted += 1
    return mapping


def char_vocab(alphabet: str | None = None) -> dict[str, int]:
    """token -> id: the 4 specials, then each character of `alphabet` (default: every printable ASCII character,
    string.printable order), in byte-level form."""
    to_unicode = _byte_to_unicode()
    chars = string.printable if alphabet is None else alphabet
    bad = [ch for ch in chars if ord(ch) > 0x7F]
    if bad or len(set(chars)) != len(chars) or not chars:
        raise ValueError(f"char_vocab: alphabet must be distinct ASCII characters, got {alphabet!r}")
    tokens = list(SPECIAL_TOKENS) + [to_unicode[ord(ch)] for ch in chars]
    return {tok: i for i, tok in enumerate(tokens)}


def build_char_tokenizer():
    """A character-level PreTrainedTokenizerFast over printable ASCII with <pad>/<bos>/<eos>/<unk> and a chat template.

    Built as a byte-level BPE with no merges, so every printable ASCII character is one token and the tokenizer
    behaves the same whichever class `AutoTokenizer` picks for the checkpoint's model_type (transformers forces
    `Qwen2Tokenizer` for qwen2). Encoding adds no bos/eos (the chat template adds bos); decode(encode(s)) == s for
    printable ASCII; other characters become <unk>. Padding is on the left, as decoding needs.
    """
    tokenizer = _char_tokenizer(char_vocab(), DEFAULT_TINY_CONFIG["max_position_embeddings"], add_bos=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _char_tokenizer(vocab: dict[str, int], max_length: int, *, add_bos: bool):
    """A byte-level BPE with no merges over `vocab` (one token per character), left padding; `add_bos`: encoding
    with special tokens puts <bos> first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(list(SPECIAL_TOKENS))
    if add_bos:
        core.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=max_length,
    )


# The embedded default run's task alphabet (jax_cat.data.arithmetic "plain" style): digits, operators, "=".
ARITHMETIC_ALPHABET = "0123456789+-*="

ARITHMETIC_TINY_CONFIG: dict[str, Any] = dict(
    DEFAULT_TINY_CONFIG,
    model_type="llama",  # qwen2 always has q/k/v biases; the default run's model has none
    vocab_size=len(SPECIAL_TOKENS) + len(ARITHMETIC_ALPHABET),
    intermediate_size=192,
    num_key_value_heads=4,
    attention_bias=False,
    max_position_embeddings=64,
)


def build_arithmetic_tokenizer(alphabet: str = ARITHMETIC_ALPHABET):
    """A character-level tokenizer over just `alphabet` (+ <pad>/<bos>/<eos>/<unk>) for the shipped arithmetic task.

    18 tokens for the default alphabet instead of 104, so a tiny model spends no capacity on characters the task
    never uses. No chat template: a prompt is encoded as <bos> followed by its characters (``add_special_tokens``
    adds the <bos>; the "plain" arithmetic prompts are what the model sees), and the target is the answer then
    <eos>. Padding on the left, as decoding needs. Characters outside the alphabet become <unk>.
    """
    return _char_tokenizer(char_vocab(alphabet), ARITHMETIC_TINY_CONFIG["max_position_embeddings"], add_bos=True)


def arithmetic_model_config(**overrides: Any):
    """The default run's ModelConfig: 2 layers, d=64, 4 heads, SwiGLU 192, RoPE, over the 18-token arithmetic
    vocabulary (about 108k parameters), with `overrides` applied."""
    from jax_cat.models.config import ModelConfig

    vocab = char_vocab(ARITHMETIC_ALPHABET)
    fields = dict(ARITHMETIC_TINY_CONFIG, bos_token_id=vocab[BOS], eos_token_id=vocab[EOS], pad_token_id=vocab[PAD])
    fields.update(overrides)
    if fields["vocab_size"] < len(vocab):
        raise ValueError(f"vocab_size={fields['vocab_size']} is smaller than the arithmetic tokenizer ({len(vocab)})")
    return ModelConfig(**fields)


def build_arithmetic_checkpoint(out_dir: str | os.PathLike, *, seed: int = 0, dtype=jnp.float32,
                                **config_overrides) -> Path:
    """Writes a randomly initialised arithmetic-vocabulary tiny model + its tokenizer in HF format (atomically)."""
    from jax_cat.models.decoder import CausalLM
    from jax_cat.models.hf import save_hf

    model = CausalLM(arithmetic_model_config(**config_overrides), rngs=nnx.Rngs(seed), dtype=dtype)
    return save_hf(model, out_dir, tokenizer=build_arithmetic_tokenizer())


def arithmetic_checkpoint(*, rebuild: bool = False) -> Path:
    """The "tiny-arithmetic" checkpoint (`build_arithmetic_checkpoint`, seed 0) in the user cache, built once offline
    and reused: what model.path / --model "tiny-arithmetic" names (the default experiment builds its own per seed)."""
    path = cache_dir() / "tiny-arithmetic"
    if rebuild or not (path / "config.json").exists():
        build_arithmetic_checkpoint(path, seed=0)
    return path


def tiny_model_config(**overrides: Any):
    """The default tiny ModelConfig (token ids from the char tokenizer), with `overrides` applied."""
    from jax_cat.models.config import ModelConfig

    vocab = char_vocab()
    fields = dict(DEFAULT_TINY_CONFIG, bos_token_id=vocab[BOS], eos_token_id=vocab[EOS], pad_token_id=vocab[PAD])
    fields.update(overrides)
    if fields["vocab_size"] < len(vocab):
        raise ValueError(f"vocab_size={fields['vocab_size']} is smaller than the char tokenizer ({len(vocab)})")
    return ModelConfig(**fields)


def build_tiny_checkpoint(out_dir: str | os.PathLike, *, seed: int = 0, dtype=jnp.float32, **config_overrides) -> Path:
    """Writes a randomly initialised tiny model + char tokenizer in HF format to out_dir (atomically); returns it."""
    from jax_cat.models.decoder import CausalLM
    from jax_cat.models.hf import save_hf

    config = tiny_model_config(**config_overrides)
    model = CausalLM(config, rngs=nnx.Rngs(seed), dtype=dtype)
    return save_hf(model, out_dir, tokenizer=build_char_tokenizer())


def default_checkpoint(*, rebuild: bool = False) -> Path:
    """The embedded default checkpoint (`default_checkpoint_dir()`, in the user cache), built once offline and reused."""
    path = default_checkpoint_dir()
    if rebuild or not (path / "config.json").exists():
        build_tiny_checkpoint(path)
    return path
