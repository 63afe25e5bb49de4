"""`python -m jax_cat` builds the default checkpoint offline, generates greedily, and exits 0."""
from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from jax_cat.__main__ import main
from jax_cat.models import load_hf
from jax_cat.models.tiny import default_checkpoint_dir


def _greedy_by_full_recompute(model, tokenizer, prompt: str, n: int) -> str:
    """Greedy decoding by re-running the full forward on a fixed-size left-padded buffer (one compile)."""
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda ids, mask: nnx.merge(graphdef, state)(ids, mask)[0, -1])
    prompt_ids = tokenizer(prompt)["input_ids"]
    size = len(prompt_ids) + n
    ids = list(prompt_ids)
    for _ in range(n):
        buf = np.zeros((1, size), np.int32)
        mask = np.zeros((1, size), np.int32)
        buf[0, size - len(ids) :], mask[0, size - len(ids) :] = ids, 1
        ids.append(int(np.argmax(np.asarray(forward(buf, mask)))))
    return tokenizer.decode(ids[len(prompt_ids) :])


def test_smoke_main_builds_once_and_generates(tmp_path, monkeypatch, capsys):
    from transformers import AutoTokenizer

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JAX_CAT_CACHE", str(tmp_path / "cache"))
    assert main(["--max-new-tokens", "5", "1+2=", "30-4="]) == 0
    out = capsys.readouterr().out
    ckpt = default_checkpoint_dir()
    assert ckpt == tmp_path / "cache" / "tiny-default" and not (tmp_path / "artifacts").exists()  # not in the CWD
    assert "building the tiny default checkpoint" in out and (ckpt / "model.safetensors").exists()
    mtime = (ckpt / "model.safetensors").stat().st_mtime_ns

    model, tokenizer = load_hf(ckpt), AutoTokenizer.from_pretrained(ckpt)
    for prompt in ("1+2=", "30-4="):
        expected = _greedy_by_full_recompute(model, tokenizer, prompt, 5)
        assert f"{prompt!r} -> {expected!r}" in out

    assert main(["--max-new-tokens", "5", "1+2=", "30-4="]) == 0
    assert "building" not in capsys.readouterr().out
    assert (ckpt / "model.safetensors").stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert main(["--checkpoint", str(tmp_path / "missing")]) == 2
