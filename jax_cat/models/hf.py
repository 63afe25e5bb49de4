"""Hugging Face safetensors <-> NNX parameters: the key table, `load_hf` and `save_hf`.

`hf_key_table(config)` lists, for every HF tensor name, the NNX path it lands on and the two layout conversions
(HF linear weights are [out, in]; our projection kernels are [in, out] with heads split out). Loading reads one
tensor at a time with `safe_open` (no torch), converts it, and places it (optionally sharded on a mesh), so peak host
memory stays near one copy of the model. Checkpoints are validated as a whole: every missing, unexpected and
mis-shaped tensor is named in a single error. The safetensors files themselves are read and written by
`jax_cat.io.safetensors` (the layer merging uses too): `Checkpoint` (headers, then tensor by tensor) and
`ShardedWriter` (planned shards, 5 GiB by default, plus the index).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from jax_cat.io.atomic import atomic_output_dir
from jax_cat.io.safetensors import (
    SAFE_INDEX, SAFE_SINGLE, Checkpoint, CheckpointError, ShardedWriter, dtype_code, read_json_object,
)
from jax_cat.io.safetensors import open_safetensors as _open
from jax_cat.io.safetensors import tensor_files as safetensors_files
from jax_cat.models.config import ModelConfig
from jax_cat.models.decoder import CausalLM
from jax_cat.models.hf_keys import (  # noqa: F401 - the key table lives in hf_keys; re-exported here
    TOKENIZER_FILES, Array, NNXPath, TensorRule, _identity, _linear, _linear_in_split, _reshape, hf_key_table,
)
from jax_cat.models.hf_keys import write_side_files

# Fetched first from the hub; the weight files are then chosen from the index (see `_hub_snapshot`).
HUB_META_PATTERNS = ["config.json", SAFE_INDEX, *TOKENIZER_FILES]
# Tensors that HF checkpoints may carry but that are derived, not learned: skipped silently.
_IGNORED = (re.compile(r".*\.rotary_emb\.inv_freq$"),)


def resolve_checkpoint_dir(path_or_repo_id: str | os.PathLike) -> Path:
    """A local directory as is; anything else is a hub id fetched with `huggingface_hub.snapshot_download`."""
    path = Path(path_or_repo_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise FileNotFoundError(f"{path} is a file; load_hf expects a checkpoint directory or a hub id")
    text = str(path_or_repo_id)
    if text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise FileNotFoundError(f"checkpoint directory {text!r} does not exist")
    try:
        return _hub_snapshot(text)
    except Exception as exc:  # offline, unknown repo, gated repo, ...: say what we tried
        raise FileNotFoundError(
            f"{text!r} is not a local checkpoint directory, and fetching it as a hub repo id failed "
            f"(offline? set HF_HUB_OFFLINE=0 / log in, or pass a local folder): {exc}"
        ) from exc


def _hub_snapshot(repo_id: str) -> Path:
    """Downloads config, tokenizer and exactly the safetensors files the checkpoint uses.

    Only the shards the index names (else model.safetensors, else any *.safetensors): repos such as Mistral's also
    ship `consolidated.safetensors`, a second full copy of the weights in another layout, which a blanket
    "*.safetensors" pattern would download too.
    """
    from huggingface_hub import snapshot_download

    meta = Path(snapshot_download(repo_id=repo_id, allow_patterns=HUB_META_PATTERNS))
    index = meta / SAFE_INDEX
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return Path(snapshot_download(repo_id=repo_id, allow_patterns=shards))
    snapshot = Path(snapshot_download(repo_id=repo_id, allow_patterns=[SAFE_SINGLE]))
    if (snapshot / SAFE_SINGLE).exists():
        return snapshot
    return Path(snapshot_download(repo_id=repo_id, allow_patterns=["*.safetensors"]))


def check_checkpoint(table: dict[str, TensorRule], shapes: dict[str, tuple[int, ...]], where: str) -> None:
    """Raises CheckpointError naming every missing, unexpected and mis-shaped tensor."""
    present = {k for k in shapes if not any(p.match(k) for p in _IGNORED)}
    missing = sorted(set(table) - present)
    unexpected = sorted(present - set(table))
    if "lm_head.weight" in unexpected and "lm_head.weight" not in table:
        unexpected.remove("lm_head.weight")  # tied checkpoints sometimes store a copy; transformers ignores it
    misshaped = sorted(
        f"{k}: checkpoint {shapes[k]} vs expected {table[k].hf_shape}"
        for k in set(table) & present
        if tuple(shapes[k]) != table[k].hf_shape
    )
    problems = []
    if missing:
        problems.append(f"missing tensors ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors ({len(unexpected)}): {', '.join(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped tensors ({len(misshaped)}): {'; '.join(misshaped)}")
    if problems:
        raise CheckpointError(f"checkpoint {where} does not match its config.json:\n  " + "\n  ".join(problems))


def read_config(ckpt_dir: Path) -> ModelConfig:
    """ModelConfig from ckpt_dir/config.json, with the stop ids that generation_config.json adds.

    Instruct checkpoints often list extra end-of-turn ids only in generation_config.json (transformers' `generate`
    stops on those); they are merged into `eos_token_id` so our sampler stops where transformers does.
    """
    config_file = ckpt_dir / "config.json"
    if not config_file.exists():
        raise CheckpointError(f"no config.json in {ckpt_dir}")
    config = ModelConfig.from_hf(read_json_object(config_file))
    generation_file = ckpt_dir / "generation_config.json"
    if generation_file.exists():
        extra = read_json_object(generation_file).get("eos_token_id")
        extra = [] if extra is None else [extra] if isinstance(extra, int) else list(extra)
        ids = list(config.eos_token_ids) + [int(i) for i in extra if int(i) not in config.eos_token_ids]
        if len(ids) > len(config.eos_token_ids):
            config = dataclasses.replace(config, eos_token_id=ids[0] if len(ids) == 1 else tuple(ids))
    return config


# ---------------------------------------------------------------------------------------------------- load / save
def load_hf(
    path_or_repo_id: str | os.PathLike,
    *,
    dtype=jnp.float32,
    mesh: jax.sharding.Mesh | None = None,
    config: ModelConfig | None = None,
    param_dtype=None,
    remat: bool | str = False,
    scan_layers: bool = False,
    attention_impl: str = "xla",
    allow_nonfinite: bool = False,
    lora: Any = None,
    quantize: str = "none",
) -> CausalLM:
    """Loads an HF checkpoint (local dir or hub id) into a CausalLM, tensor by tensor, without torch.

    With `mesh`, each tensor is placed directly with the sharding its logical axes get (see `jax_cat.sharding`).
    `dtype` (compute), `param_dtype` (storage; None = `dtype`), `remat`, `scan_layers` and `attention_impl` are
    passed to `CausalLM`; with `scan_layers` the per-layer tensors are stacked as they load (same HF names).
    A tensor holding NaN/Inf is refused (CheckpointError naming it) unless `allow_nonfinite`. `lora` (a
    `jax_cat.models.lora.LoRAConfig`) adds fresh adapters (B = 0, placed like their kernels) to the loaded model.
    `quantize` ("nf4" / "int8"; `jax_cat.models.quant`) stores the layers' projection kernels quantized (QLoRA's
    frozen base): they stay on the host until each is quantized and placed, so no device holds them in full precision.
    A PEFT LoRA adapter folder (adapter_config.json, no config.json) loads its `base_model_name_or_path` with the
    adapters on it (`jax_cat.models.peft.load_peft`).
    """
    ckpt_dir = resolve_checkpoint_dir(path_or_repo_id)
    if (ckpt_dir / "adapter_config.json").is_file() and not (ckpt_dir / "config.json").is_file():
        from jax_cat.models.peft import load_peft

        base = read_json_object(ckpt_dir / "adapter_config.json").get("base_model_name_or_path")
        if not base:
            raise CheckpointError(f"{ckpt_dir} is a LoRA adapter folder without base_model_name_or_path in "
                                  "adapter_config.json: load its base with load_hf, then load_peft(model, folder)")
        model = load_hf(base, dtype=dtype, mesh=mesh, config=config, param_dtype=param_dtype, remat=remat,
                        scan_layers=scan_layers, attention_impl=attention_impl, allow_nonfinite=allow_nonfinite,
                        quantize=quantize)
        return load_peft(model, ckpt_dir)
    from jax_cat.models.quant import is_projection_path, quantize_model

    config = config or read_config(ckpt_dir)
    table = hf_key_table(config)
    checkpoint = Checkpoint(ckpt_dir)
    files = checkpoint.files
    check_checkpoint(table, checkpoint.shapes, str(ckpt_dir))

    options = dict(
        dtype=dtype, param_dtype=param_dtype, remat=remat, scan_layers=scan_layers, attention_impl=attention_impl
    )
    abstract = nnx.eval_shape(lambda: CausalLM(config, rngs=nnx.Rngs(0), **options))
    graphdef, abstract_state = nnx.split(abstract)
    flat = dict(nnx.to_flat_state(abstract_state))
    shardings = None
    if mesh is not None:
        from jax_cat.sharding import logical_to_sharding

        shardings = {path: logical_to_sharding(var, mesh) for path, var in flat.items()}

    by_file: dict[Path, list[str]] = {}
    for name in table:
        by_file.setdefault(files[name], []).append(name)
    loaded: dict[NNXPath, Any] = {}
    stacks: dict[NNXPath, np.ndarray] = {}  # scan_layers: host buffers [num_layers, ...] filled layer by layer
    progress = tqdm(total=len(table), desc=f"loading {ckpt_dir.name}", unit="tensor", disable=not sys.stderr.isatty())
    for file, names in by_file.items():
        with _open(file) as handle:
            for name in names:
                progress.update()
                rule = table[name]
                tensor = rule.to_nnx(handle.get_tensor(name))
                if not allow_nonfinite and not np.isfinite(tensor).all():  # one vectorised pass: corrupt weights
                    raise CheckpointError(f"tensor {name!r} in {file} holds NaN or Inf (corrupt weights); "
                                          "pass allow_nonfinite=True to load it anyway")
                path, layer = param_location(rule.path, scan_layers)
                expected = flat[path].get_value()
                shape = expected.shape if layer is None else expected.shape[1:]
                if tensor.shape != shape:  # guards the table itself
                    raise CheckpointError(f"{name}: converted shape {tensor.shape} != parameter {shape}")
                value = tensor.astype(expected.dtype)
                if layer is not None:
                    stacks.setdefault(path, np.empty(expected.shape, expected.dtype))[layer] = value
                    continue
                if quantize != "none" and is_projection_path(path):
                    loaded[path] = value  # kept on the host until quantize_model replaces it
                    continue
                loaded[path] = jax.device_put(value, shardings[path]) if shardings is not None else jnp.asarray(value)
    progress.close()
    for path, value in stacks.items():
        if quantize != "none" and is_projection_path(path):
            loaded[path] = value  # quantized (and placed) below
            continue
        loaded[path] = jax.device_put(value, shardings[path]) if shardings is not None else jnp.asarray(value)
    for path, var in flat.items():
        var.set_value(loaded[path])
    state = nnx.from_flat_state(flat)
    model = quantize_model(nnx.merge(graphdef, state), quantize, mesh=mesh)
    if lora is not None:
        from jax_cat.models.lora import add_lora

        add_lora(model, lora)
    return model


def param_location(path: NNXPath, scan_layers: bool) -> tuple[NNXPath, int | None]:
    """Where an `hf_key_table` path lives in a model: (path, None), or for a `scan_layers` model the stacked
    parameter's path and the layer's index on its leading axis (("layers", i, *rest) -> (("layers", *rest), i))."""
    if scan_layers and path[0] == "layers":
        return ("layers", *path[2:]), int(path[1])
    return path, None


def iter_hf_tensors(model: CausalLM) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, numpy tensor in HF layout) for every parameter, one at a time.

    A model with LoRA adapters gives its merged kernels, W + A.B.alpha/rank (float32 sum, one tensor at a time); a
    quantized base (`jax_cat.models.quant`) gives its dequantized kernels (plus the adapters' update)."""
    from jax_cat.models.quant import dense_kernel

    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    for name, rule in hf_key_table(model.config).items():
        path, layer = param_location(rule.path, model.scan_layers)
        if path in flat:
            value = flat[path].get_value()
            tensor = np.asarray(jax.device_get(value if layer is None else value[layer]))
        else:  # a quantized base (QLoRA): the dequantized kernel
            tensor = dense_kernel(model, path, layer)
        a_path = (*path[:-1], f"{path[-1]}_lora", "lora_a")
        if a_path in flat:
            pick = lambda p: np.asarray(jax.device_get(flat[p].get_value() if layer is None else flat[p].get_value()[layer]),
                                        np.float32)
            a, b = pick(a_path), pick((*path[:-1], f"{path[-1]}_lora", "lora_b"))
            tensor = tensor.astype(np.float32) + np.tensordot(a, b, axes=1) * model.lora.scale
        yield name, rule.to_hf(tensor)


_EXPORT_DTYPES = {"float32": np.float32, "bfloat16": jnp.bfloat16, "float16": np.float16}
_SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float32"}


def _dtype_name(dtype) -> str:
    return {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}.get(jnp.dtype(dtype).name, "float32")


def export_dtype_name(dtype: Any) -> str:
    """"float32" / "bfloat16" / "float16" from a name or a numpy/jnp dtype; ValueError naming the choices otherwise."""
    name = dtype if isinstance(dtype, str) else jnp.dtype(dtype).name
    if name not in _EXPORT_DTYPES:
        raise ValueError(f"export dtype {dtype!r} is not supported; use one of {', '.join(_EXPORT_DTYPES)}")
    return name


def checkpoint_dtype(path_or_dir: str | os.PathLike) -> str:
    """The float dtype an HF checkpoint stores its weights in ("bfloat16", "float16" or "float32").

    Read from the safetensors header of the input embedding (else the first floating tensor), so a config.json that
    says otherwise does not matter; config.json's `dtype` / `torch_dtype` only when no weights are readable.
    """
    ckpt_dir = Path(path_or_dir)
    try:
        info = Checkpoint(ckpt_dir).info
    except CheckpointError:
        info = {}
    for name in sorted(info, key=lambda n: (not n.endswith("embed_tokens.weight"), n)):
        found = _SAFETENSORS_DTYPES.get(info[name].dtype)
        if found is not None:
            return found
    config_file = ckpt_dir / "config.json"
    config = read_json_object(config_file) if config_file.exists() else {}
    name = config.get("dtype") or config.get("torch_dtype")
    return name if name in _EXPORT_DTYPES else "float32"


def save_hf(
    model: CausalLM,
    out_dir: str | os.PathLike,
    *,
    tokenizer: Any = None,
    max_shard_bytes: int = 5 * 2**30,
    dtype: Any = None,
    source: str | os.PathLike | None = None,
) -> Path:
    """Writes config.json + safetensors (sharded with an index above `max_shard_bytes`) that transformers loads.

    Written atomically (`jax_cat.io.atomic.atomic_output_dir`): everything goes to `<out_dir>.tmp-<pid>-<hex>`, which
    then takes the place of an existing `out_dir` (moved aside, then deleted); a killed run's temporary is removed
    by the next save to the same target, and a second process saving to the same target at once gets
    `OutputBusyError`. `tokenizer` may be a tokenizer object (saved with save_pretrained) or a directory whose
    tokenizer files are copied.

    `dtype` ("float32", "bfloat16", "float16" or a dtype; None = the model's parameter dtype) is the dtype of the
    written tensors, rounded to nearest even, and of config.json's `dtype` / `torch_dtype`. `source` (the
    checkpoint the model came from) supplies generation_config.json and any tokenizer file the export lacks.
    config.json carries both transformers spellings (see `ModelConfig.to_hf_dict`).
    """
    out_dir = Path(out_dir).expanduser().resolve()
    name = _dtype_name(model.param_dtype) if dtype is None else export_dtype_name(dtype)
    with atomic_output_dir(out_dir, overwrite=True) as tmp:
        config_dict = model.config.to_hf_dict(dtype=name)
        (tmp / "config.json").write_text(json.dumps(config_dict, indent=2, sort_keys=True) + "\n")
        _write_safetensors(model, tmp, max_shard_bytes, np.dtype(_EXPORT_DTYPES[name]))
        write_side_files(tmp, tokenizer=tokenizer, source=source)
    return out_dir


def _write_safetensors(model: CausalLM, out: Path, max_shard_bytes: int, dtype: np.dtype | None = None) -> None:
    """Streams tensors (cast to `dtype` when given) into planned shards of at most max_shard_bytes
    (`jax_cat.io.safetensors.ShardedWriter`: one tensor in memory at a time, the index when sharded)."""
    table = hf_key_table(model.config)
    dtype = np.dtype(dtype if dtype is not None else model.param_dtype)
    writer = ShardedWriter(out, [(name, dtype_code(dtype), rule.hf_shape) for name, rule in table.items()],
                           max_shard_bytes)
    for name, tensor in iter_hf_tensors(model):
        writer.write(name, tensor.astype(dtype, copy=False))
    writer.close()
