"""The low layer that jax_cat and merging share: how checkpoints and results reach the disk, and how a CLI fails.

- `jax_cat.io.atomic`: atomic files and folders (temporary beside the target, renamed when complete, removed on any
  error) and the output lock (`<out>.lock`; a second writer gets `OutputBusyError`).
- `jax_cat.io.safetensors`: HF safetensors checkpoints tensor by tensor (`Checkpoint` reads one file, an index and
  its shards, or any number of `*.safetensors`; `ShardedWriter` writes planned shards, 5 GiB by default, plus
  the index).
- `jax_cat.io.peft`: PEFT LoRA adapter folders read with JSON + safetensors (adapter_config.json's checks, the
  lora_A / lora_B pairs), for `jax_cat.models.peft` and `merging.adapters` alike.
- `jax_cat.io.cli`: the one CLI error policy (one line; exit 2 bad input, 1 failure, 130 interrupted; `--debug`
  prints the traceback, then the same line).
- `jax_cat.io.compile_cache`: where the CLIs keep XLA's persistent compilation cache (--compile-cache DIR,
  --no-compile-cache, JAX_CAT_XLA_CACHE, default <user cache>/xla); JAX is imported only when it is enabled.

Model resolution ("tiny" | folder | hub id) builds on models, so it lives in `jax_cat.models.resolve`.

Importing this package (or any of its modules) pulls in the standard library, numpy, ml_dtypes and safetensors at
most: no JAX, transformers, torch, Vizier or sampler (tests/merging/test_wall.py checks it), so `merging`'s core
may use it and `import jax_cat` stays free of them too. Import the submodules by name.
"""
