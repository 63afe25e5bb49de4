"""`python -m merging.dots` when no query passes the difficulty filter: one line that names --max-difficulty (the
flag that lets the run go on), exit 2 -- not a bare "no query has difficulty <= x" after minutes of scoring."""
from tests.merging.test_dots_cli import _args, family  # noqa: F401 - the tiny base/sft/rl family fixture

from merging.dots import main


def test_no_query_easy_enough_names_max_difficulty(family, tmp_path, capsys):  # noqa: F811
    # 6 queries > n_easy + n_hard = 4, so each is scored; the random tiny model's sampled answers never all agree,
    # so no difficulty is <= 0 (values below 0 are refused up front as out of range)
    assert main(_args(family, tmp_path / "o", "--trials", "1", "--max-difficulty", "0")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no query has difficulty <= 0" in err and "raise --max-difficulty" in err
