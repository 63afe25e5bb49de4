"""The earlier home of the CLI error policy: `jax_cat.io.cli` now (this module re-exports it unchanged)."""
from jax_cat.io.cli import (  # noqa: F401
    BAD_INPUT_ERRORS, BAD_INPUT_STATUS, BUG_STATUS, DEBUG_FLAG, INTERRUPTED_STATUS, QUIET_LOGGERS, ArgumentParser,
    CLIError, one_line, quiet_logging, quiet_third_party, run_cli, split_debug,
)
from jax_cat.io.cli import __all__  # noqa: F401
