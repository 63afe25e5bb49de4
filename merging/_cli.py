"""How the merging CLIs fail: `jax_cat.io.cli`, the one policy of every jax_cat and merging CLI (re-exported here
under the names merging's CLIs have always used). See that module for the rules."""
from jax_cat.io.cli import (  # noqa: F401
    BAD_INPUT, BAD_INPUT_ERRORS, BAD_INPUT_STATUS, BUG_STATUS, DEBUG_FLAG, INTERRUPTED_STATUS, QUIET_LOGGERS,
    ArgumentParser, CLIError, one_line, quiet_logging, quiet_third_party, run_cli, split_debug,
)
from jax_cat.io.cli import __all__  # noqa: F401
