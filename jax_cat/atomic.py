"""The earlier home of the atomic outputs: `jax_cat.io.atomic` now (this module re-exports it unchanged)."""
from jax_cat.io.atomic import (  # noqa: F401
    OutputBusyError, atomic_output_dir, atomic_write, atomic_write_text, clean_stale, clean_stale_temporaries,
    output_lock, pid_alive, save_figure,
)
from jax_cat.io.atomic import __all__  # noqa: F401
