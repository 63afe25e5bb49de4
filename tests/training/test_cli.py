"""`python -m jax_cat.train` end to end in subprocesses: a run killed mid-way and resumed ends where an uninterrupted
run ends, and two processes on localhost (jax.distributed, CPU collectives) train the same parameters as one."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

REPO = Path(__file__).resolve().parents[2]
QUIET = ["--set", "train.eval_at_end=false", "--set", "logging.progress=false", "--set", "logging.tensorboard=false"]


def _env(**extra):
    # LLVM level 0 for every trainer process here (as in the pytest process, tests/conftest.py): these tests compare
    # runs with each other (process counts, kill + resume), all compiled alike; it cuts their compile time ~40 %
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0")
    env.update(extra)
    return env


def _train(args, **env):
    return subprocess.Popen([sys.executable, "-m", "jax_cat.train", *args, *QUIET], env=_env(**env), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finished(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out


def _weights(run: Path) -> dict[str, np.ndarray]:
    return load_file(str(run / "final" / "model.safetensors"))


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def _saved_steps(directory: Path) -> list[int]:
    return sorted(int(p.name) for p in directory.glob("*") if p.name.isdigit()) if directory.is_dir() else []


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_parameters(tiny_ckpt, tmp_path):
    """Opt-in (slow, 3 trainer processes, ~35 s): SIGKILL mid-run, then --resume ends on the uninterrupted weights.
    By default the same contract is checked by tests/training/test_loops.py::test_sft_stop_and_resume_equals_straight_run
    (and its GRPO twin: exact params, optimizer state and one metrics row a step across two invocations) and
    tests/training/test_run_folder.py::test_a_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one (a
    checkpoint cut short by a kill); the CLI's subprocess path by test_two_processes_train_the_same_parameters_as_one."""
    # 60 steps, an async checkpoint every 5: a run is ~1 s of steps after its ~7 s start-up (jax, compile).
    args = ["--config", "sft_tiny", "--set", f"model.path={tiny_ckpt}", "--set", "train.steps=60", "--set", "train.checkpoint_every=5",
            "--set", "data.batch_size=8", "--set", "train.log_every=5"]
    straight = _train([*args, "--out", str(tmp_path / "straight")])
    victim = _train([*args, "--out", str(tmp_path / "killed")])
    ckpts = tmp_path / "killed" / "checkpoints" / "sft"
    deadline = time.time() + 240
    while time.time() < deadline and victim.poll() is None and not [s for s in _saved_steps(ckpts) if s >= 10]:
        time.sleep(0.02)
    assert victim.poll() is None, "the run finished before it could be killed; raise train.steps"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = _saved_steps(ckpts)
    assert killed_at and max(killed_at) < 60 and not (tmp_path / "killed" / "final").exists()
    resumed = _train([*args, "--out", str(tmp_path / "killed"), "--resume"])
    _finished(resumed)
    _finished(straight)
    assert _max_diff(_weights(tmp_path / "straight"), _weights(tmp_path / "killed")) <= 1e-6
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in
             (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(5, 61, 5))  # the steps repeated after the kill are logged once


@pytest.mark.skipif(sys.platform != "linux", reason="gloo CPU collectives over localhost")
def test_two_processes_train_the_same_parameters_as_one(tiny_ckpt, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # An SFT warm-up (3 steps), then 2 GRPO updates (8 prompts x 2 samples; each process samples and scores its own
    # rows) at a learning rate too small to move a float32 weight, so the final weights are the warm-up's and
    # comparable across process counts, while the GRPO stage's multi-process batch placement is exercised.
    args = ["--config", "sft_tiny", "--set", f"model.path={tiny_ckpt}", "--set", "warmup.steps=3", "--set", "data.batch_size=8",
            "--set", "checkpoint.async_save=false", "--set", "train.method=grpo", "--set", "train.steps=2",
            "--set", "rollout.group_size=2", "--set", "rollout.max_new_tokens=4",
            "--set", "optimizer.learning_rate=1e-30", "--set", "optimizer.warmup_steps=0"]
    one = _train([*args, "--out", str(tmp_path / "one")])
    two = [_train([*args, "--out", str(tmp_path / "two")], JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                  JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)) for i in range(2)]
    for proc in two:
        _finished(proc)
    _finished(one)
    # Each process read its own half of the same 8 records a step (shards 0::2 and 1::2 of one shuffle), so the
    # global batch holds the single process's records in another order: the token-mean loss is the same.
    assert _max_diff(_weights(tmp_path / "one"), _weights(tmp_path / "two")) <= 1e-5
    assert _saved_steps(tmp_path / "two" / "checkpoints" / "warmup") == [3]
    assert _saved_steps(tmp_path / "two" / "checkpoints" / "grpo") == [2]
    from transformers import AutoTokenizer

    from jax_cat.models import load_hf

    final = tmp_path / "two" / "final"  # an HF checkpoint + tokenizer that load_hf and transformers read
    assert load_hf(final).config.num_hidden_layers == 2
    assert AutoTokenizer.from_pretrained(final).decode([AutoTokenizer.from_pretrained(final).eos_token_id]) == "<eos>"
