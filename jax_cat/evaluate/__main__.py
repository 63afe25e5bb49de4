"""`python -m jax_cat.evaluate` (see `jax_cat.evaluate.cli`)."""
from jax_cat.evaluate.cli import main

raise SystemExit(main())
