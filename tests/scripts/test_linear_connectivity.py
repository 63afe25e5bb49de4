"""scripts/linear_connectivity.py: the barrier against hand-computed chords, the held-out loss against a plain
numpy cross-entropy of the same model's logits, and its bad-input errors."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from tests._load_script import load_script


def _load(name: str):
    if name in sys.modules:
        return sys.modules[name]
    return load_script(f"scripts/{name}.py", register=True)  # dataclasses look their module up in sys.modules


rd = _load("reproduce_dots")
lc = _load("linear_connectivity")


def test_barrier_is_the_largest_excess_over_the_chord():
    ts = [0.0, 0.25, 0.5, 0.75, 1.0]
    # chord from 1.0 to 3.0: 1.5, 2.0, 2.5 inside; the curve 1.7, 2.9, 2.4 exceeds it by .2, .9, -.1
    assert lc.chord_barrier(ts, [1.0, 1.7, 2.9, 2.4, 3.0]) == pytest.approx(0.9)
    assert lc.chord_barrier(ts, [1.0, 1.2, 1.4, 2.0, 3.0]) == 0.0  # convex below its chord: no barrier
    # a reward: the dip below the chord from .2 to .6 (.3, .4, .5 inside) is .4 - .1 = .3 at t = .5
    assert lc.chord_barrier(ts, [0.2, 0.3, 0.1, 0.5, 0.6], higher_is_better=True) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="length"):
        lc.chord_barrier([0.0], [1.0])


def test_heldout_loss_is_the_token_mean_cross_entropy_of_the_answers(tmp_path):
    import jax
    from flax import nnx
    from transformers import AutoTokenizer

    from jax_cat.models.hf import load_hf
    from jax_cat.models.tiny import build_arithmetic_checkpoint
    from jax_cat.training.config import DataConfig
    from jax_cat.training.data import SFTCollator

    path = build_arithmetic_checkpoint(tmp_path / "m", seed=3)
    model, tok = load_hf(path), AutoTokenizer.from_pretrained(path)
    problems = {"add2": [{"prompt": "07+45=", "answer": "052"}, {"prompt": "3+4=", "answer": "007"}]}
    cfg = DataConfig(dataset="x.jsonl", max_prompt_len=8, max_target_len=5, use_chat_template=False)
    graphdef, state = nnx.split(model)
    got = lc.HeldoutLoss(tok, cfg, problems, graphdef)(state)["add2"]
    # reference: log-softmax of the logits in numpy, the NLL of every answer token (and EOS), mean over them
    batch = SFTCollator(tok, cfg)(problems["add2"])
    logits = np.asarray(jax.device_get(model(batch["input_ids"], batch["attention_mask"])), np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(
        -1, keepdims=True)
    nll = [-logp[b, t - 1, batch["input_ids"][b, t]] for b in range(2) for t in range(1, batch["input_ids"].shape[1])
           if batch["loss_mask"][b, t]]
    assert len(nll) == 2 * 4  # three answer characters + EOS per problem
    assert got == pytest.approx(float(np.mean(nll)), rel=1e-5)


def test_bad_points_is_one_line_exit_2(capsys):
    assert lc.main(["--points", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--points" in err[0]


def test_mixture_interleaves_the_skills_and_holds_no_test_prompt(tmp_path):
    s = rd.Settings(out=str(tmp_path), train_records=40, eval_problems=50)
    path = rd.write_mixture(["add2", "sub2"], s, tmp_path)
    import json

    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(rows) == 40 and ["+" in r["prompt"] for r in rows[:4]] == [True, False, True, False]
    test = {p["prompt"] for n in ("add2", "sub2") for p in rd.task(n, s).test_set()}
    assert not test & {r["prompt"] for r in rows}


def test_model_size_overrides_are_parsed_or_refused():
    assert rd.model_overrides("hidden_size=128, num_hidden_layers=4") == {"hidden_size": 128, "num_hidden_layers": 4}
    assert rd.model_overrides("") == {}
    with pytest.raises(ValueError, match="key=integer"):
        rd.Settings(model_size="hidden_size=big")
