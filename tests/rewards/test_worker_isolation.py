"""Verifier workers are their own module: no dependence on the caller's script, clear start-up failures."""
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from jax_cat.rewards import MathVerifier, WorkerStartError

REPO = Path(__file__).resolve().parents[2]

GUARDLESS = textwrap.dedent(
    r"""
    # No `if __name__ == "__main__":` guard, as a README example is written.
    import sys
    from jax_cat.rewards import MathVerifier, compute_rewards

    print("top-level ran", flush=True)
    with MathVerifier(max_workers=2, timeout_s=40.0, startup_timeout_s=60.0) as v:
        r = compute_rewards(
            ["\\boxed{\\sqrt{12}}", "\\boxed{(x+1)^2}", "\\boxed{\\sqrt{5}}", "#### 7"],
            ["2\\sqrt{3}", "x^2+2x+1", "2", "7"],
            verifier=v,
        )
        assert v.stats["pool"] == 3, v.stats
    print("REWARDS", list(map(float, r)), flush=True)
    """
)


def test_guardless_script_gets_right_rewards_in_seconds(tmp_path):
    """Before the fix: forkserver children re-ran this script and the pool never started (120 s, then a
    misleading RuntimeError)."""
    script = tmp_path / "guardless.py"
    script.write_text(GUARDLESS)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=90, env=env, cwd=tmp_path
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "REWARDS [1.0, 1.0, 0.0, 1.0]" in proc.stdout
    assert proc.stdout.count("top-level ran") == 1  # the script body ran once: workers never imported it
    assert elapsed < 30.0, elapsed


def unimportable_check(pred, gold, inner_timeout_s):  # its __module__ is rewritten below
    return True


def test_start_failure_says_what_happened_and_the_fix():
    unimportable_check.__module__ = "no_such_module_for_jax_cat_workers"
    try:
        v = MathVerifier(max_workers=2, timeout_s=2.0, startup_timeout_s=60.0, pair_fn=unimportable_check)
        with pytest.raises(WorkerStartError) as info:
            v.check("a", "b")  # letters: the fast path declines, so the pool starts
    finally:
        unimportable_check.__module__ = __name__
    message = str(info.value)
    assert "exited with code 1 during start-up" in message
    assert "No module named 'no_such_module_for_jax_cat_workers'" in message
    assert "Fix:" in message and "120s" not in message
    assert v._pool is None  # nothing left running


def test_pair_fn_that_workers_cannot_import_is_refused_up_front():
    with pytest.raises(ValueError, match="module-level function"):
        MathVerifier(pair_fn=lambda p, g, t: True)
    fn = unimportable_check
    fn.__module__ = "__main__"
    try:
        with pytest.raises(ValueError, match="__main__ script, which workers never import"):
            MathVerifier(pair_fn=fn)
    finally:
        fn.__module__ = __name__
    with pytest.raises(ValueError, match="startup_timeout_s"):
        MathVerifier(startup_timeout_s=0)


def test_a_hung_answer_does_not_stall_the_others():
    """Only the hung worker is replaced: the other worker keeps answering during the hang's deadline."""
    from tests.rewards import _faulty

    preds = ["hang"] + [f"{c} ok" for c in "abcdefgh"]
    with MathVerifier(max_workers=2, timeout_s=3.0, pair_fn=_faulty.ok_or_misbehave) as v:
        v.check("warm ok", "x")
        start = time.perf_counter()
        verdicts = v.check_many([(p, "x") for p in preds])
        elapsed = time.perf_counter() - start
        assert verdicts == [False] + [True] * 8
        assert v.stats["timeouts"] == 1 and v.stats["recycles"] == 1
        assert elapsed < 3.0 + 10.0, elapsed
        pids = [w.pid for w in v._pool.workers]
    for pid in pids:  # closed: no worker process left
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
