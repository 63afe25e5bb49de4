"""HF safetensors checkpoints and atomic outputs on the merging side: `jax_cat.io` (the low layer both packages
share: `jax_cat.io.safetensors` reads and writes checkpoints tensor by tensor, `jax_cat.io.atomic` writes outputs
temp-then-rename under the output lock). Re-exported here under the names merging has always used."""
from jax_cat.io.atomic import (  # noqa: F401
    OutputBusyError, atomic_output_dir, atomic_write, atomic_write_text, clean_stale, clean_stale_temporaries,
    output_lock, pid_alive,
)
from jax_cat.io.atomic import _pid_alive  # noqa: F401 - the earlier private name
from jax_cat.io.safetensors import (  # noqa: F401
    DEFAULT_SHARD_SIZE, DTYPES, FLOAT_DTYPES, INDEX_FILES, WEIGHT_SUFFIXES, Checkpoint, CheckpointError,
    CheckpointMismatchError, ShardedWriter, TensorInfo, copy_side_files, open_safetensors, parse_size,
)

__all__ = [
    "CheckpointMismatchError", "DTYPES", "FLOAT_DTYPES", "DEFAULT_SHARD_SIZE", "Checkpoint", "TensorInfo",
    "ShardedWriter", "OutputBusyError", "atomic_output_dir", "atomic_write", "atomic_write_text", "copy_side_files",
    "parse_size",
]
