"""`python -m merging.dots` end to end on a tiny family: outputs, the written model equal to the candidate the
search scored, --resume, and one-line exit-2 errors for bad input."""
import csv
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from merging.dots import main


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """A tiny base (tied embeddings) and two perturbed copies saved with save_hf, plus a query file."""
    from jax_cat.models import load_hf, save_hf
    from jax_cat.models.tiny import build_char_tokenizer, build_tiny_checkpoint

    root = tmp_path_factory.mktemp("dots-family")
    base = build_tiny_checkpoint(root / "base", seed=0, max_position_embeddings=128)
    for i, (name, scale) in enumerate((("sft", 0.02), ("rl", 0.005))):
        graphdef, state = nnx.split(load_hf(base))
        leaves, treedef = jax.tree.flatten(state)
        keys = jax.random.split(jax.random.key(i + 1), len(leaves))
        leaves = [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
        save_hf(nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves)), root / name,
                tokenizer=build_char_tokenizer())
    queries = root / "queries.txt"
    queries.write_text("What is 2+3?\nWhat is 4+4?\nCompute 7-2.\nWhat is 1+1?\n\nWhat is 9-3?\nAdd 5 and 6.\n")
    return {k: root / k for k in ("base", "sft", "rl")} | {"queries": queries}


def _args(fam, out, *extra):
    return ["--base", str(fam["base"]), "--sft", str(fam["sft"]), "--rl", str(fam["rl"]),
            "--queries", str(fam["queries"]), "--out", str(out), "--designer", "RANDOM_SEARCH",
            "--max-new-tokens", "4", "--votes", "3", "--selection-votes", "2", "--n-easy", "2", "--n-hard", "2",
            "--mesh", "1", "1", "1", "--no-progress", *extra]


def _expected_state(fam, coeffs, density, rescale):
    """The merge by hand from the public pytree functions (not through merging.dots)."""
    from jax_cat.models import load_hf
    from merging import combine, dots_sparsify, task_vector, topk

    base = nnx.state(load_hf(fam["base"]))
    taus = [task_vector(nnx.state(load_hf(fam[n])), base, dtype=jnp.float32) for n in ("sft", "rl")]
    sparse = [dots_sparsify(t, density) if rescale else topk(t, density) for t in taus]
    return combine(base, sparse, list(coeffs))


def test_end_to_end_then_resume(family, tmp_path, capsys):
    from jax_cat.models import load_hf

    out = tmp_path / "run"
    assert main(_args(family, out, "--trials", "2")) == 0
    printed = capsys.readouterr().out
    assert "picked trial" in printed
    for f in ("config.json", "analysis.json", "queries.json", "reference.json", "trials.csv", "trials.json",
              "pareto.png", "summary.json", "vizier.db", "model/model.safetensors", "model/merge_info.json",
              "model/config.json", "model/tokenizer.json"):
        assert (out / f).exists(), f
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [int(r["trial"]) for r in rows] == [1, 2]
    assert sum(r["picked"] == "True" for r in rows) == 1
    for r in rows:  # the searched perplexity is the prompt one (the authors' default)
        assert float(r["perplexity"]) == float(r["prompt_perplexity"])
        assert 0.5 <= float(r["sft"]) <= 2.0 and 0.0 <= float(r["consistency"]) <= 1.0
    queries = json.loads((out / "queries.json").read_text())
    assert len(queries["selected"]) == 4 and queries["pool_size"] == 6  # the blank line is not a query
    summary = json.loads((out / "summary.json").read_text())
    picked = summary["picked"]
    assert summary["model_written_by"] == "streamed merge" and summary["rescale"] == "off"

    # the streamed checkpoint holds exactly the candidate that was scored (rescale off: no norm factor)
    written = nnx.state(load_hf(out / "model"))
    want = _expected_state(family, (picked["sft"], picked["rl"]), 0.3, rescale=False)
    for a, b in zip(jax.tree.leaves(written), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    # --resume to 3 trials: trials 1 and 2 are kept as they were, one new trial runs
    assert main(_args(family, out, "--trials", "3", "--resume")) == 0
    rows3 = list(csv.DictReader((out / "trials.csv").open()))
    assert [int(r["trial"]) for r in rows3] == [1, 2, 3]
    for old, new in zip(rows, rows3):
        assert (old["sft"], old["rl"], old["consistency"]) == (new["sft"], new["rl"], new["consistency"])
    assert json.loads((out / "queries.json").read_text()) == queries

    # a resume that changes the study is refused with one line
    capsys.readouterr()
    assert main(_args(family, out, "--trials", "3", "--resume", "--density", "0.5")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--density was 0.3" in err


def test_rescale_on_writes_the_norm_restored_merge(family, tmp_path):
    from jax_cat.models import load_hf

    out = tmp_path / "rescaled"
    assert main(_args(family, out, "--trials", "1", "--rescale", "on", "--perplexity", "answer",
                      "--vote-strategy", "maj@3")) == 0
    summary = json.loads((out / "summary.json").read_text())
    picked = summary["picked"]
    assert picked["perplexity"] == picked["answer_perplexity"]
    assert 0.0 <= picked["consistency"] <= 1.0 and json.loads((out / "config.json").read_text())["vote_strategy"] == "maj@3"
    written = nnx.state(load_hf(out / "model"))
    want = _expected_state(family, (picked["sft"], picked["rl"]), 0.3, rescale=True)
    for a, b in zip(jax.tree.leaves(written), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("case", ["no_base", "no_queries", "out_exists", "bad_density", "bad_strategy"])
def test_bad_input_is_one_line_and_exit_2(family, tmp_path, capsys, case):
    out = tmp_path / "o"
    args = _args(family, out, "--trials", "1")
    if case == "no_base":
        args[1] = str(tmp_path / "missing")
    elif case == "no_queries":
        args[args.index("--queries") + 1] = str(tmp_path / "none.txt")
    elif case == "out_exists":
        out.mkdir()
        (out / "something").write_text("x")
    elif case == "bad_density":
        args += ["--density", "1.5"]
    else:
        args += ["--vote-strategy", "maj@x"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m merging.dots: error:") and "\n" not in err, err
    assert {"no_base": "--base", "no_queries": "none.txt", "out_exists": "--resume", "bad_density": "--density",
            "bad_strategy": "maj@x"}[case] \
        in err
    assert main(["--base", "x"]) == 2  # argparse errors: one line, exit 2 too
    assert capsys.readouterr().err.count("\n") == 1
    assert not out.exists() or case == "out_exists"
