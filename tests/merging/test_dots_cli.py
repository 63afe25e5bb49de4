"""`python -m merging.dots` end to end on a tiny family: outputs, the written model equal to the candidate the
search scored, --resume, and one-line exit-2 errors for bad input."""
import csv
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from merging.dots import main
from tests._load_script import load_script


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


# ---------------------------------------------------------------------------------------------------------------
# Issue 19: every input validated before anything is written; one error policy; label-free queries
# ---------------------------------------------------------------------------------------------------------------
def _reshaped(fam, root):
    """A copy of --rl with one tensor of another shape (another architecture)."""
    import shutil

    from safetensors.numpy import load_file, save_file

    dst = root / "rl-wide"
    if not dst.exists():
        shutil.copytree(fam["rl"], dst)
        tensors = load_file(str(dst / "model.safetensors"))
        name = next(k for k, v in sorted(tensors.items()) if v.ndim == 2)
        tensors[name] = np.concatenate([tensors[name], tensors[name][:1]], axis=0)
        save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


REFUSED = {  # flags -> what the one line must name
    "query pool -1": (["--query-pool", "-1"], "--query-pool must be >= 1, got -1"),
    "trials 0": (["--trials", "0"], "--trials must be >= 1"),
    "top-p 2": (["--top-p", "2"], r"--top-p must be in (0, 1], got 2"),
    "top-p nan": (["--top-p", "nan"], "--top-p must be a finite number"),
    "temperature 0": (["--temperature", "0"], "--temperature must be > 0"),
    "one vote": (["--votes", "1"], "--votes must be >= 2"),
    "coeff range reversed": (["--coeff-range", "2", "1"], "--coeff-range LOW HIGH needs LOW < HIGH"),
    "negative n-easy": (["--n-easy", "-1"], "--n-easy must be >= 0"),
    "no queries drawn": (["--n-easy", "0", "--n-hard", "0"], "--n-easy + --n-hard must be >= 1"),
    "max difficulty": (["--max-difficulty", "1.5"], "--max-difficulty must be in [0, 1]"),
    "ppl budget": (["--ppl-budget", "-0.1"], "--ppl-budget must be >= 0"),
    "search density": (["--search-density", "0.2", "0"], r"--search-density must be in (0, 1]"),
    "shard size": (["--max-shard-size", "big"], "--max-shard-size: cannot parse size 'big'"),
    "batch size": (["--batch-size", "0"], "--batch-size must be >= 1"),
    "mesh": (["--mesh", "1", "0", "1"], "--mesh FSDP must be >= 1"),
    "mesh too big": (["--mesh", "64", "1", "1"], "needs 64 devices"),
    "strategy needs more votes": (["--vote-strategy", "maj@5"], "needs 5 samples but --votes is 3"),
    "unknown flag": (["--trails", "3"], "unrecognized arguments: --trails 3"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_bad_flags_are_refused_before_anything_is_written(family, tmp_path, capsys, case):
    extra, message = REFUSED[case]
    out = tmp_path / "o"
    args = _args(family, out, "--trials", "1")
    if case.startswith("mesh"):  # one --mesh
        i = args.index("--mesh")
        del args[i:i + 4]
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("python -m merging.dots: error:"), err
    assert message in err, err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_checkpoint_of_another_shape_is_refused_and_the_corrected_command_runs(family, tmp_path, capsys):
    """Before: config.json and analysis.json were written first, so the corrected command was refused as 'not
    empty' (and with --resume as 'another --rl')."""
    out = tmp_path / "o"
    args = _args(family, out, "--trials", "1", "--query-pool", "4")
    wide = _reshaped(family, tmp_path)
    bad = list(args)
    bad[bad.index("--rl") + 1] = str(wide)
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--rl" in err and "is not a fine-tune of --base" in err and "shape" in err, err
    assert not out.exists() and not (tmp_path / "o.lock").exists()
    assert main(args) == 0  # the corrected command, unchanged otherwise
    rows = json.loads((out / "trials.json").read_text())
    assert [r["trial"] for r in rows] == [1]


def test_out_that_is_a_file_or_read_only(family, tmp_path, capsys, monkeypatch):
    f = tmp_path / "file"
    f.write_text("mine")
    assert main(_args(family, f, "--trials", "1")) == 2
    assert "--out" in capsys.readouterr().err and f.read_text() == "mine"
    ro = tmp_path / "ro"
    ro.mkdir()
    import subprocess

    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,ro", "tmpfs", str(ro)],
                             capture_output=True).returncode == 0
    if not mounted:  # not root: the OS answer for a read-only file system, simulated
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, m, **kw: False if str(p).startswith(str(ro)) else real(p, m))
    try:
        assert main(_args(family, ro / "run", "--trials", "1")) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "cannot write in" in err and "choose another --out" in err, err
    finally:
        if mounted:
            subprocess.run(["umount", str(ro)], check=False)


QUERY_FILES = {
    "jsonl prompt": ("q.jsonl", '{"prompt": " What is 2+3? "}\n\n{"prompt": "What is 4+4?"}\n'),
    "jsonl question": ("q.jsonl", '{"question": "What is 2+3?", "id": 1}\n{"question": "What is 4+4?", "id": 2}\n'),
    "json problem": ("q.json", '[{"problem": "What is 2+3?"}, {"problem": "What is 4+4?"}]'),
    "json columns": ("q.json", '{"prompt": ["What is 2+3?", "What is 4+4?"]}'),
    "json lines in .json": ("q.json", '{"prompt": "What is 2+3?"}\n{"prompt": "What is 4+4?"}\n'),
    "json strings": ("q.json", '{"data": ["What is 2+3?", "What is 4+4?"]}'),
}


@pytest.mark.parametrize("case", [*QUERY_FILES, "parquet", "parquet question", "folder"])
def test_label_free_queries_are_read_answers_never(tmp_path, case):
    """Only prompts (prompt/question/problem), no answer column: read as they are (the old loader refused them)."""
    from merging.queries import load_queries

    want = ["What is 2+3?", "What is 4+4?"]
    if case.startswith("parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        col = "question" if case.endswith("question") else "prompt"
        path = tmp_path / "q.parquet"
        pq.write_table(pa.table({col: want, "junk": [b"\x00", None]}), path)
    elif case == "folder":
        path = tmp_path / "qs"
        path.mkdir()
        (path / "part-2.jsonl").write_text('{"prompt": "What is 4+4?"}\n')
        (path / "part-1.jsonl").write_text('{"prompt": "What is 2+3?"}\n')
    else:
        name, text = QUERY_FILES[case]
        path = tmp_path / name
        path.write_text(text)
    assert load_queries(str(path)) == want
    assert load_queries(str(path), limit=1) == want[:1]


BAD_QUERIES = {
    "malformed jsonl": ("q.jsonl", '{"prompt": "a"}\n{"prompt": "b"\n', "q.jsonl: line 2 is not valid JSON"),
    "no prompt column": ("q.jsonl", '{"text": "a"}\n', "line 1 has no prompt/problem/question field"),
    "prompt not text": ("q.jsonl", '{"prompt": "a"}\n{"prompt": 3}\n', "line 2: 'prompt' is int, not text"),
    "bad json": ("q.json", '[{"prompt": "a"},', "q.json: not valid JSON (line 1"),
    "json object": ("q.json", '{"prompt": "a"}', "expected a JSON list of rows"),
    "not utf-8": ("q.txt", b"caf\xe9\n", "not UTF-8 text"),
    "empty": ("q.txt", "\n\n", "holds no queries"),
    "bad parquet": ("q.parquet", b"PAR1 junk", "not a readable Parquet file"),
}


@pytest.mark.parametrize("case", list(BAD_QUERIES))
def test_bad_queries_file_is_one_line_naming_it(family, tmp_path, capsys, case):
    name, content, message = BAD_QUERIES[case]
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = tmp_path / "o"
    args = _args(family, out, "--trials", "1")
    args[args.index("--queries") + 1] = str(path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and str(path) in err, err
    assert not out.exists()


@pytest.fixture(scope="module")
def finished(family, tmp_path_factory):
    """A finished 1-trial study to damage copies of."""
    out = tmp_path_factory.mktemp("dots-done") / "run"
    assert main(_args(family, out, "--trials", "1")) == 0
    return out


@pytest.mark.parametrize("damage", ["vizier.db", "queries.json", "config.json", "reference.json", "queries.json idx"])
def test_damaged_study_files_on_resume_are_one_line_naming_the_file(family, finished, tmp_path, capsys, damage):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished, out)
    name = damage.split()[0]
    if damage == "vizier.db":
        (out / name).write_bytes(b"this is not a database" * 100)
    elif damage == "queries.json idx":
        (out / name).write_text('{"selected": [0, 99]}')
    else:
        (out / name).write_text((out / name).read_text()[:20])
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(_args(family, out, "--trials", "2", "--resume")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(out / name) in err and "Traceback" not in err, err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing touched


def test_interrupt_failure_and_full_disk_are_one_line(family, tmp_path, capsys, monkeypatch):
    import errno

    import merging.search

    out = tmp_path / "o"

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(merging.search, "run_search", ctrl_c)
    assert main(_args(family, out, "--trials", "1")) == 130
    assert capsys.readouterr().err == "python -m merging.dots: error: interrupted\n"
    assert (out / "config.json").exists() and (out / "analysis.json").exists()  # kept: resumable
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]

    real = Path.write_text

    def full_disk(self, text, *a, **k):
        if self.name.startswith("trials.json"):
            real(self, text[: len(text) // 2], *a, **k)
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, text, *a, **k)

    monkeypatch.undo()
    monkeypatch.setattr(Path, "write_text", full_disk)
    assert main(_args(family, out, "--trials", "1", "--resume")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "--debug" in err, err
    assert not [p for p in out.iterdir() if ".tmp-" in p.name], sorted(p.name for p in out.iterdir())


# ---------------------------------------------------------------------------------------------------------------
# Soak (CI size): interrupted during a suggestion, a trial and the final write, resumed each time
# ---------------------------------------------------------------------------------------------------------------
def _study_result(out):
    rows = json.loads((out / "trials.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    weights = (out / "model" / "model.safetensors").read_bytes()
    return [(r["trial"], r["sft"], r["rl"], r["consistency"], r["perplexity"]) for r in rows], \
        summary["picked"]["trial"], weights


def test_soak_three_interrupts_resume_to_the_uninterrupted_result(family, tmp_path, monkeypatch, capsys):
    """Ctrl-C inside Vizier's suggestion, inside a trial's scoring and half way through writing the picked model;
    each time `--resume` continues: 3 trials, none lost or repeated, the same trials, pick and weights as an
    uninterrupted run (seeded quasi-random designer). SIGKILL at random points: scripts/soak_dots.py (slow test
    below) and tests/merging/test_search_resume.py."""
    import merging.checkpoint
    import merging.search
    from vizier._src.service import pythia_service

    def args(out, *extra):
        a = _args(family, out, "--trials", "3", "--seed", "0", *extra)
        a[a.index("--designer") + 1] = "QUASI_RANDOM_SEARCH"
        return a

    assert main(args(tmp_path / "reference")) == 0
    reference = _study_result(tmp_path / "reference")

    calls = {"suggest": 0, "trial": 0, "write": 0}
    armed = {"phase": None, "at": 0}

    def tick(phase):
        calls[phase] += 1
        if armed["phase"] == phase and calls[phase] == armed["at"]:
            raise KeyboardInterrupt

    real_suggest, real_search, real_write = (pythia_service.PythiaServicer.Suggest, merging.search.run_search,
                                             merging.checkpoint.ShardedWriter.write)

    def suggest(self, request, context=None):
        tick("suggest")
        return real_suggest(self, request, context)

    def run_search(objective, *a, **k):
        def scored(params):
            tick("trial")
            return objective(params)
        return real_search(scored, *a, **k)

    def write(self, name, array):
        real_write(self, name, array)
        tick("write")  # after the first tensor: the model folder is half written

    monkeypatch.setattr(pythia_service.PythiaServicer, "Suggest", suggest)
    monkeypatch.setattr(merging.search, "run_search", run_search)
    monkeypatch.setattr(merging.checkpoint.ShardedWriter, "write", write)
    out = tmp_path / "soaked"
    for phase, at in (("suggest", 2), ("trial", 1), ("write", 1)):  # trial 1 done; trial 2 ACTIVE; all 3 done
        for k in calls:
            calls[k] = 0
        armed.update(phase=phase, at=at)
        assert main(args(out, *(["--resume"] if out.exists() else []))) == 130, phase
        assert capsys.readouterr().err.endswith("python -m merging.dots: error: interrupted\n")
        assert calls[phase] == at
    armed.update(phase=None)
    assert main(args(out, "--resume")) == 0
    assert _study_result(out) == reference
    assert not [p.name for p in out.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("soaked.")]
    assert "WARNING:absl" not in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("JAX_CAT_SOAK"), reason="opt-in (JAX_CAT_SOAK=1): 3 child processes that each "
                    "import JAX, 4-8 min on 2 cores; the in-process soak above runs in CI, scripts/soak_dots.py is the "
                    "10-kill check")
def test_soak_sigkill_and_ctrl_c_in_child_processes(tmp_path):
    """scripts/soak_dots.py at CI size: 3 kills (SIGKILL or SIGINT) of a real `python -m merging.dots` child, one
    during a suggestion, one during a trial, one during the final write (minutes: each child imports JAX)."""
    soak_dots = load_script("scripts/soak_dots.py")
    report = soak_dots.soak(tmp_path, kills=3, trials=3, seed=0, schedule=["suggest", "trial", "write"],
                            reference_in_process=True, deadline=400)
    assert report["ok"], report["problems"]
    assert report["kills_by_phase"] == {"suggest": 1, "trial": 1, "write": 1} and report["identical_to_uninterrupted"]


def test_the_in_memory_candidate_is_written_in_the_out_dtype(family, tmp_path, monkeypatch):
    """A pick with two different densities cannot be one streamed merge: the scored candidate is written from
    memory, and it kept the parameters' float32 whatever --out-dtype said (issue 20); now it is written as the
    streamed merge is. The pick is steered to such a trial (seed 0's fifth trial has densities 0.1 / 0.9)."""
    import merging.search as search

    pick = search.pick

    def two_densities(records, **kwargs):
        mixed = [r for r in records if r.parameters["density_sft"] != r.parameters["density_rl"]]
        return mixed[0] if mixed else pick(records, **kwargs)

    monkeypatch.setattr(search, "pick", two_densities)
    out = tmp_path / "run"
    assert main(_args(family, out, "--trials", "5", "--search-density", "0.1", "0.9", "--out-dtype", "bfloat16")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model_written_by"] == "in-memory candidate", summary["densities"]
    config = json.loads((out / "model" / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    from safetensors import safe_open

    with safe_open(str(out / "model" / "model.safetensors"), "np") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
