"""Bad inputs across the library, each met with a clear error and no output or partial file left behind.

Each row: what goes in, the error type expected, a pattern the message must match (it names the offending file,
tensor, argument or value), and the folders that must hold no new entry afterwards (no output, no `*.tmp-*`).
docs/reliability.md lists the promises these rows test.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """A good tiny checkpoint, a second one of the same shape (a 'fine-tune') and one of another shape."""
    from jax_cat.models.tiny import build_tiny_checkpoint

    root = tmp_path_factory.mktemp("bad-inputs")
    return {
        "good": build_tiny_checkpoint(root / "good", seed=0),
        "ft": build_tiny_checkpoint(root / "ft", seed=1),
        "other": build_tiny_checkpoint(root / "other", seed=2, intermediate_size=96),
    }


def copy_ckpt(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def snapshot(*dirs: Path) -> dict[Path, set[str]]:
    return {d: set(os.listdir(d)) if d.exists() else set() for d in dirs}


def assert_nothing_new(before: dict[Path, set[str]]) -> None:
    for d, names in before.items():
        now = set(os.listdir(d)) if d.exists() else set()
        assert now == names, f"left behind in {d}: {sorted(now - names)}"


@contextlib.contextmanager
def expect(exc: type[BaseException], match: str, *watch: Path):
    """The block raises `exc` with a message matching `match`, and adds no entry to any folder in `watch`."""
    before = snapshot(*watch)
    with pytest.raises(exc, match=match):
        yield
    assert_nothing_new(before)


def rewrite_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def lie_about_sizes(file: Path) -> None:
    """Rewrite a safetensors header so the first tensor claims 4 KiB more data than the file holds."""
    raw = bytearray(file.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    start, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = [start, end + 4096]
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    file.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(raw[8 + n :]))


def tensor_names(file: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(file), "numpy") as handle:
        return list(handle.keys())


# ------------------------------------------------------------------------------------------------ load_hf
LOAD_CASES = {
    # name: (mutate(ckpt_dir), error type name, message pattern)
    "config.json not JSON": (lambda d: (d / "config.json").write_text("{not json"), "CheckpointError",
                             r"config\.json is not valid JSON"),
    "config.json a JSON list": (lambda d: (d / "config.json").write_text("[1, 2]"), "CheckpointError",
                                r"config\.json must hold a JSON object"),
    "config.json missing": (lambda d: (d / "config.json").unlink(), "CheckpointError", r"no config\.json in .*bad"),
    "unsupported model_type": (lambda d: rewrite_json(d / "config.json", model_type="gpt9"), "ValueError",
                               r"unsupported model_type 'gpt9'"),
    "config disagrees with tensors": (lambda d: rewrite_json(d / "config.json", intermediate_size=96),
                                      "CheckpointError", r"mis-shaped tensors .*mlp\.down_proj\.weight"),
    "safetensors header lies about sizes": (lambda d: lie_about_sizes(d / "model.safetensors"), "CheckpointError",
                                            r"cannot read safetensors file .*model\.safetensors"),
    "truncated safetensors": (lambda d: (d / "model.safetensors").write_bytes(
        (d / "model.safetensors").read_bytes()[:1000]), "CheckpointError", r"cannot read .*model\.safetensors"),
    "no weights at all": (lambda d: (d / "model.safetensors").unlink(), "CheckpointError",
                          r"no model\.safetensors .* in .*bad"),
    "index names a missing shard": (
        lambda d: (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
            name: ("model-00002-of-00002.safetensors" if i == 0 else "model.safetensors")
            for i, name in enumerate(tensor_names(d / "model.safetensors"))}})),
        "CheckpointError", r"refers to missing shard file\(s\): .*model-00002-of-00002\.safetensors"),
    "index not JSON": (lambda d: (d / "model.safetensors.index.json").write_text("garbage"), "CheckpointError",
                       r"model\.safetensors\.index\.json is not valid JSON"),
    "generation_config.json not JSON": (lambda d: (d / "generation_config.json").write_text("nope"),
                                        "CheckpointError", r"generation_config\.json is not valid JSON"),
    "config.json is a folder": (lambda d: ((d / "config.json").unlink(), (d / "config.json").mkdir()),
                                "IsADirectoryError", r"config\.json"),
}


@pytest.mark.parametrize("case", list(LOAD_CASES))
def test_load_hf_refuses(case, ckpts, tmp_path):
    from jax_cat.models import hf

    mutate, error, pattern = LOAD_CASES[case]
    bad = copy_ckpt(ckpts["good"], tmp_path / "bad")
    mutate(bad)
    exc = {"CheckpointError": hf.CheckpointError, "ValueError": ValueError, "IsADirectoryError": IsADirectoryError}[error]
    with expect(exc, pattern, bad, tmp_path):
        hf.load_hf(bad)


def test_load_hf_refuses_missing_paths(ckpts, tmp_path):
    from jax_cat.models.hf import load_hf

    with expect(FileNotFoundError, r"does not exist", tmp_path):
        load_hf(tmp_path / "nowhere" / "ckpt")
    with expect(FileNotFoundError, r"model\.safetensors is a file", tmp_path):
        load_hf(ckpts["good"] / "model.safetensors")


UNREADABLE_SCRIPT = """
import sys
from jax_cat.models.hf import load_hf
try:
    load_hf(sys.argv[1])
except PermissionError as e:
    print("PermissionError:", e)
"""


def test_load_hf_unreadable_file(ckpts, tmp_path, monkeypatch):
    """chmod 000 on config.json. Root reads anything, so as root the load runs in a child as 'nobody'; where that
    user cannot run this interpreter, the OS refusal is simulated at the open call instead."""
    from jax_cat.models.hf import load_hf

    bad = copy_ckpt(ckpts["good"], tmp_path / "bad")
    for d in (tmp_path, bad):
        os.chmod(d, 0o755)
    (bad / "config.json").chmod(0)
    if os.geteuid() != 0:
        with expect(PermissionError, r"config\.json", bad):
            load_hf(bad)
        return
    env = dict(os.environ, PYTHONPATH=str(REPO), HOME=str(tmp_path), JAX_PLATFORMS="cpu")
    before = snapshot(bad)
    try:
        proc = subprocess.run([sys.executable, "-c", UNREADABLE_SCRIPT, str(bad)], capture_output=True, text=True,
                              env=env, timeout=120, user="nobody", cwd=tmp_path)
    except (PermissionError, KeyError, OSError):
        proc = None  # 'nobody' missing or unable to execute the interpreter (e.g. installed under /root)
    if proc is not None and proc.stdout.startswith("PermissionError:"):
        assert "config.json" in proc.stdout
        assert_nothing_new(before)
        return
    real_read_text = Path.read_text

    def refuse(self, *args, **kwargs):
        if self.name == "config.json" and self.parent == bad:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", refuse)
    with expect(PermissionError, r"Permission denied: .*bad/config\.json", bad):
        load_hf(bad)


# ------------------------------------------------------------------------------------------------ full disk
def _mount_tiny_tmpfs(mount_point: Path) -> str | None:
    """Mounts a 256 KiB tmpfs at mount_point (needs root / CAP_SYS_ADMIN); None on success, else why it cannot."""
    if shutil.which("mount") is None:
        return "no `mount` command: cannot make a small full disk here"
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return f"cannot mount a small tmpfs here ({proc.stderr.strip() or proc.returncode}); full-disk rows skipped"
    return None


def _probe_tmpfs() -> str | None:
    """Tries the mount once at collection, so the full-disk rows are skipped by a condition with its reason."""
    import tempfile

    with tempfile.TemporaryDirectory() as probe:
        why = _mount_tiny_tmpfs(Path(probe))
        if why is None:
            subprocess.run(["umount", probe], check=False)
        return why


_NO_TMPFS = _probe_tmpfs()
needs_tmpfs = pytest.mark.skipif(_NO_TMPFS is not None, reason=str(_NO_TMPFS))


@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 KiB tmpfs mounted under tmp_path (tests using it carry `needs_tmpfs`)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    why = _mount_tiny_tmpfs(mount_point)
    assert why is None, why
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


@needs_tmpfs
def test_save_hf_on_a_full_disk_leaves_nothing(tiny_disk, ckpts):
    """The tiny model is ~1.5 MB: the write fails with ENOSPC, and no output or temp folder is left."""
    from jax_cat.models.hf import load_hf, save_hf

    model = load_hf(ckpts["good"])
    with expect(OSError, r"No space left on device", tiny_disk):
        save_hf(model, tiny_disk / "out")


@needs_tmpfs
def test_merge_on_a_full_disk_leaves_nothing(tiny_disk, ckpts):
    from merging.methods import method_settings
    from merging.stream import merge_checkpoints

    with expect(OSError, r"No space left on device", tiny_disk):
        merge_checkpoints(ckpts["good"], [ckpts["ft"]], method_settings("task_arithmetic"), tiny_disk / "merged",
                          progress=False)


def test_save_hf_into_a_path_under_a_file(ckpts, tmp_path):
    from jax_cat.models.hf import load_hf, save_hf

    (tmp_path / "afile").write_text("x")
    model = load_hf(ckpts["good"])
    with expect((FileExistsError, NotADirectoryError), r"afile", tmp_path):
        save_hf(model, tmp_path / "afile" / "out")


# ------------------------------------------------------------------------------------------------ generate
def _toy():
    from tests.sampling.toy_model import CharTokenizer, ToyLM

    return ToyLM(np.zeros((8, 8), np.float32), np.zeros((8, 8), np.float32)), CharTokenizer(8)


GENERATE_CASES = {
    "n = 0": (dict(prompts=[[3]], n=0, max_new_tokens=2), ValueError, r"n must be >= 1, got 0"),
    "max_new_tokens = 0": (dict(prompts=[[3]], max_new_tokens=0), ValueError, r"max_new_tokens must be >= 1, got 0"),
    "top_p > 1": (dict(prompts=[[3]], max_new_tokens=2, top_p=1.5), ValueError, r"top_p must be in \[0, 1\], got 1.5"),
    "negative temperature": (dict(prompts=[[3]], max_new_tokens=2, temperature=-1.0), ValueError,
                             r"temperature must be a finite number >= 0.*-1"),
    "NaN temperature": (dict(prompts=[[3]], max_new_tokens=2, temperature=float("nan")), ValueError,
                        r"temperature must be a finite number"),
    "negative top_k": (dict(prompts=[[3]], max_new_tokens=2, top_k=-1), ValueError, r"top_k must be an int >= 0"),
    "empty prompt": (dict(prompts=[[3], []], max_new_tokens=2), ValueError, r"prompt 1 is empty"),
    "prompt too long": (dict(prompts=[[3] * 7], max_new_tokens=2), ValueError,
                        r"prompt 0 has 7 tokens.*max_position_embeddings=8"),
    "empty stop string": (dict(prompts=[[3]], max_new_tokens=2, stop=["x", ""]), ValueError,
                          r"stop strings must be non-empty"),
    "mixed prompt kinds": (dict(prompts=[[3], "ab"], max_new_tokens=2), TypeError, r"prompt 1 is a string"),
}


@pytest.mark.parametrize("case", list(GENERATE_CASES))
def test_generate_refuses(case):
    from jax_cat.sampling import generate

    kwargs, exc, pattern = GENERATE_CASES[case]
    model, tokenizer = _toy()
    with pytest.raises(exc, match=pattern):
        generate(model, tokenizer, **kwargs)


# ------------------------------------------------------------------------------------------------ rewards, losses
def test_compute_rewards_refuses():
    from jax_cat.rewards import MathVerifier, compute_rewards

    with pytest.raises(ValueError, match=r"completions \(3\) and golds \(2\) must have equal length"):
        compute_rewards(["1", "2", "3"], ["1", "2"], use_math_verify=False)
    with pytest.raises(ValueError, match=r"max_workers must be >= 1, got 0"):
        MathVerifier(max_workers=0)
    with pytest.raises(ValueError, match=r"timeout_s must be > 0, got -1"):
        MathVerifier(timeout_s=-1)
    with pytest.raises(ValueError, match=r"never 'fork'\), got 'fork'"):
        MathVerifier(mp_context="fork")
    with pytest.raises(ValueError, match=r"pair_fn .* must be a module-level function"):
        MathVerifier(pair_fn=lambda p, g, t: True)


def test_losses_refuse_rewards_of_the_wrong_length():
    import jax.numpy as jnp

    from jax_cat.losses.cat import cat_weights, group_advantages
    from jax_cat.losses.strategies import BestOfN

    with pytest.raises(ValueError, match=r"group_advantages: rewards .* must have shape \[B\]=\(4,\), got \(5,\)"):
        group_advantages(jnp.ones(5), jnp.array([0, 0, 1, 1]))
    with pytest.raises(ValueError, match=r"cat_weights: rewards .* must have shape \[B\]=\(4,\), got \(3,\)"):
        cat_weights(BestOfN(2), rewards=jnp.ones(3), group_ids=jnp.array([0, 0, 1, 1]))


def test_group_split_across_micro_batches():
    # Not an error: the trainer splits a rollout batch into strided micro-batches (rows i, i+k, ...), so groups are
    # split, and that is exact because the CAT advantages come from the WHOLE batch first (docs/losses.md).
    import jax
    import jax.numpy as jnp

    from jax_cat.losses import PassAtN, cat_advantages, cat_rl_loss, loss_denominator

    strategy = PassAtN(4)
    rewards = jnp.array([1, 0, 0, 0, 1, 1, 0, 0], jnp.float32)  # two groups of 4 (rows 0-3, rows 4-7)
    group_ids = jnp.array([0, 0, 0, 0, 1, 1, 1, 1])
    lengths = jnp.array([3, 1, 2, 3, 2, 3, 1, 2])
    mask = (jnp.arange(3)[None, :] < lengths[:, None]).astype(jnp.float32)
    lp = -jnp.linspace(0.1, 2.4, 24).reshape(8, 3)
    micro = [jnp.array([0, 2, 4, 6]), jnp.array([1, 3, 5, 7])]  # the trainer's split for k = 2: both groups split
    den = loss_denominator(mask, "token_mean")
    adv, _ = cat_advantages(strategy, rewards=rewards, group_ids=group_ids)

    def whole(lp):
        return cat_rl_loss(lp, None, None, None, None, mask, strategy, advantages=adv, loss_denominator=den)[0]

    def summed(lp, per_micro_batch_advantages=False):
        total = 0.0
        for rows in micro:
            a = (cat_advantages(strategy, rewards=rewards[rows], group_ids=group_ids[rows])[0]
                 if per_micro_batch_advantages else adv[rows])
            total += cat_rl_loss(lp[rows], None, None, None, None, mask[rows], strategy, advantages=a,
                                 loss_denominator=den)[0]
        return total

    loss, grad = jax.value_and_grad(whole)(lp)
    split_loss, split_grad = jax.value_and_grad(summed)(lp)
    assert abs(float(split_loss) - float(loss)) <= 1e-6 and float(jnp.max(jnp.abs(split_grad - grad))) <= 1e-7
    assert float(jnp.abs(grad[1]).sum()) > 1e-3  # row 1 (a wrong answer in a group with one right) is pushed down

    # What goes WRONG with advantages per micro-batch: micro-batch 1 holds rows 1 and 3 of group 0, both wrong, so
    # that half-group has no spread and those rows get advantage 0 (the whole batch gives them < 0).
    bad_adv = cat_advantages(strategy, rewards=rewards[micro[1]], group_ids=group_ids[micro[1]])[0]
    assert float(adv[1]) < -0.1 and float(adv[3]) < -0.1
    assert float(bad_adv[0]) == 0.0 and float(bad_adv[1]) == 0.0
    bad_loss, bad_grad = jax.value_and_grad(lambda x: summed(x, per_micro_batch_advantages=True))(lp)
    assert float(jnp.abs(bad_grad[1]).sum()) == 0.0  # the wrong answer is no longer penalised
    assert abs(float(bad_loss) - float(loss)) > 0.05 * abs(float(loss))


# ------------------------------------------------------------------------------------------------ evaluate
class _PlainTokenizer:
    chat_template = None
    pad_token_id, eos_token_id = 0, 2


EVALUATE_CASES = {
    "k above n": (dict(problems=[{"prompt": "q", "answer": "1"}], n=2, ks=[1, 4]), ValueError,
                  r"ks must be non-empty integers in \[1, n=2\], got \[1, 4\]"),
    "no problems": (dict(problems=[], n=2, ks=[1]), ValueError, r"no problems given"),
    "problem without answer": (dict(problems=[{"prompt": "q", "answer": "1"}, {"prompt": "r"}], n=1, ks=[1]),
                               ValueError, r"problem 1 needs a string 'prompt' and an 'answer'"),
    "unknown bon scorer": (dict(problems=[{"prompt": "q", "answer": "1"}], n=1, ks=[1], bon_scorer="vibes"),
                           ValueError, r"bon_scorer must be one of .* got 'vibes'"),
}


@pytest.mark.parametrize("case", list(EVALUATE_CASES))
def test_evaluate_refuses(case):
    from jax_cat.evaluate import evaluate

    kwargs, exc, pattern = EVALUATE_CASES[case]
    with pytest.raises(exc, match=pattern):
        evaluate(object(), _PlainTokenizer(), **kwargs)


def cli_refuses(main, argv, pattern, capsys, *watch):
    """A CLI given bad input exits with status 2 (returned, or argparse's SystemExit(2)) with a stderr message
    matching `pattern`, and writes nothing."""
    import re

    before = snapshot(*watch)
    try:
        status = main(argv)
    except SystemExit as exit_:
        status = exit_.code
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert re.search(pattern, err), err
    assert_nothing_new(before)


def test_evaluate_cli_refuses_before_writing(tmp_path, capsys):
    from jax_cat.evaluate import main

    out = str(tmp_path / "results")
    cli_refuses(main, ["--model", str(tmp_path / "nowhere"), "--dataset", "arithmetic", "--n", "4", "--k", "1,8",
                       "--out", out], r"--k: every k must be in \[1, --n=4\], got \[1, 8\]", capsys, tmp_path)
    cli_refuses(main, ["--model", "x", "--dataset", "arithmetic", "--n", "many", "--out", out], r"--n", capsys,
                tmp_path)
    cli_refuses(main, ["--model", str(tmp_path / "nowhere"), "--dataset", "arithmetic", "--n", "2", "--out", out],
                r"nowhere", capsys, tmp_path)


# ------------------------------------------------------------------------------------------------ merging
def test_merge_refuses_mismatched_checkpoints(ckpts, tmp_path):
    from merging.methods import method_settings
    from merging.stream import CheckpointMismatchError, merge_checkpoints

    with expect(CheckpointMismatchError, r"tensor 'model\.layers\.0\.mlp\.\w+_proj\.weight': shape", tmp_path):
        merge_checkpoints(ckpts["good"], [ckpts["other"]], method_settings("task_arithmetic"), tmp_path / "m",
                          progress=False)
    with expect(FileNotFoundError, r"nowhere", tmp_path):
        merge_checkpoints(tmp_path / "nowhere", [ckpts["ft"]], method_settings("task_arithmetic"), tmp_path / "m",
                          progress=False)
    with expect(ValueError, r"got 1 models but 2 coefficients; give one", tmp_path):
        merge_checkpoints(ckpts["good"], [ckpts["ft"]], method_settings("task_arithmetic", coefficients=(1.0, 2.0)),
                          tmp_path / "m", progress=False)


def test_merge_never_overwrites_by_accident(ckpts, tmp_path):
    from merging.methods import method_settings
    from merging.stream import merge_checkpoints

    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with expect(FileExistsError, r"m exists \(pass overwrite=True", tmp_path, out):
        merge_checkpoints(ckpts["good"], [ckpts["ft"]], method_settings("task_arithmetic"), out, progress=False)
    assert (out / "keep.txt").read_text() == "mine"


def test_merge_spec_and_cli_refuse_bad_arguments(ckpts, tmp_path, capsys):
    from merging.merge import main
    from merging.methods import method_settings
    from merging.stream import parse_size

    with pytest.raises(ValueError, match=r"density must be in \(0, 1\], got 1.5"):
        method_settings("ties", density=1.5)
    with pytest.raises(ValueError, match=r"density has no effect with method 'task_arithmetic'"):
        method_settings("task_arithmetic", density=0.5)
    with pytest.raises(ValueError, match=r"unknown merge method: .*got 'average'"):
        method_settings("average")
    with pytest.raises(ValueError, match=r"cannot parse size '2XB'"):
        parse_size("2XB")
    argv = ["--base", str(ckpts["good"]), "--models", str(ckpts["ft"]), "--out", str(tmp_path / "m"), "--no-progress"]
    cli_refuses(main, argv + ["--method", "average"], r"--method", capsys, tmp_path)
    cli_refuses(main, argv + ["--method", "task_arithmetic", "--max-shard-size", "2XB"], r"cannot parse size '2XB'",
                capsys, tmp_path)


def test_analysis_refuses_mismatched_inputs(ckpts, tmp_path):
    from merging.analysis import magnitude_ratio, tensor_pair_stats
    from merging.stream import CheckpointMismatchError, analyze_checkpoints

    with pytest.raises(ValueError, match=r"shapes differ: \(2, 3\) vs \(3, 2\)"):
        tensor_pair_stats(np.ones((2, 3)), np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"kind must be 'l2' or 'mean_abs', got 'l7'"):
        magnitude_ratio({"a": np.ones(3)}, {"a": np.ones(3)}, kind="l7")
    with expect(CheckpointMismatchError, r"tensor '.*': shape", tmp_path):
        analyze_checkpoints(ckpts["good"], ckpts["ft"], ckpts["other"], progress=False)


# ------------------------------------------------------------------------------------------------ datasets
def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding)
    return path


DATASET_CASES = {  # issue 19 item 13: each names the file (and the line); nothing is tried as a hub id
    "missing file": (lambda d: d / "nope.jsonl", FileNotFoundError, r"no such file or folder: .*nope\.jsonl"),
    "missing path in a folder": (lambda d: d / "sub" / "train", FileNotFoundError, r"sub/train"),
    "malformed JSON lines": (lambda d: _write(d / "bad.jsonl", '{"prompt": "a", "answer": "1"}\n\n{"prompt": }\n'),
                             ValueError, r"bad\.jsonl, line 3: not valid JSON"),
    "a line that is not an object": (lambda d: _write(d / "list.jsonl", '[1, 2]\n'), ValueError,
                                     r"list\.jsonl, line 1: expected a JSON object"),
    "not UTF-8": (lambda d: _write(d / "latin.jsonl", '{"prompt": "\xe9", "answer": "1"}\n', "latin-1"), ValueError,
                  r"latin\.jsonl: not UTF-8"),
    "a row without an answer": (lambda d: _write(d / "na.jsonl", '{"prompt": "a", "answer": "1"}\n{"prompt": "b"}\n'),
                                ValueError, r"row 1 has no answer"),
    "a null answer": (lambda d: _write(d / "null.json", '[{"prompt": "a", "answer": null}]'), ValueError,
                      r"row 0 has no answer"),
}


@pytest.mark.parametrize("case", list(DATASET_CASES))
def test_load_prompt_dataset_refuses(case, tmp_path):
    from jax_cat.data import load_prompt_dataset

    make, exc, match = DATASET_CASES[case]
    source = make(tmp_path)
    with expect(exc, match, tmp_path):
        load_prompt_dataset(source)


def test_rows_without_answers_are_skipped_and_counted_never_trained_as_none(tmp_path, capfd):
    """Issue 19 item 5: a JSONL row without the key (filled with null by a table reader) or with null is skipped,
    its index reported; no record's answer is the text "None". No progress bar is printed for a local file."""
    from jax_cat.data import load_prompt_dataset
    from jax_cat.training.config import ConfigError, DataConfig
    from jax_cat.training.data import train_records

    rows = ['{"prompt": "1+1=", "answer": "2"}', '{"prompt": "2+2="}', '{"prompt": "3+3=", "answer": null}',
            '{"prompt": "4+4=", "answer": 8}', '{"prompt": "5+5=", "answer": "  "}']
    path = _write(tmp_path / "train.jsonl", "\n".join(rows) + "\n")
    skipped: list[int] = []
    records = load_prompt_dataset(path, skipped=skipped)
    assert [r["answer"] for r in records] == ["2", "8"] and skipped == [1, 2, 4]
    assert load_prompt_dataset(path, skipped=[], limit=1)[0]["answer"] == "2"
    capfd.readouterr()
    assert [r["answer"] for r in train_records(DataConfig(dataset=str(path)))] == ["2", "8"]
    err = capfd.readouterr().err
    assert err.strip().splitlines() == [f"warning: data.dataset='{path}' (split 'train'): skipped 3 rows without an "
                                        "answer (rows 1, 2, 4); using 2"], err
    none = _write(tmp_path / "none.jsonl", rows[1] + "\n" + rows[2] + "\n")
    with expect(ConfigError, r"none\.jsonl.*none of its 2 rows has an answer", tmp_path):
        train_records(DataConfig(dataset=str(none)))


def test_an_unknown_hub_name_fails_at_once_when_the_hub_is_unreachable(tmp_path):
    """Issue 19 item 15: with the hub unreachable (here: an endpoint that refuses connections) and HF_HUB_OFFLINE
    unset, an unknown dataset or model name fails in seconds with one message, instead of ~30 s of retries."""
    script = (
        "import time\n"
        "from jax_cat.data import load_prompt_dataset\n"
        "from jax_cat.training.runtime import model_path\n"
        "for call in (lambda: load_prompt_dataset('someorg/nonexistent', split='train'),\n"
        "             lambda: model_path('someorg/nomodel')):\n"
        "    t = time.perf_counter()\n"
        "    try:\n"
        "        call()\n"
        "    except Exception as err:\n"
        "        print(type(err).__name__, round(time.perf_counter() - t, 1), err)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2, proc.stdout + proc.stderr[-2000:]
    dataset, model = (line.split(" ", 2) for line in lines)
    assert dataset[0] == "FileNotFoundError" and "hub is unreachable (offline)" in dataset[2]
    assert model[0] == "ConfigError" and "model.path='someorg/nomodel'" in model[2] and "offline" in model[2]
    assert float(dataset[1]) < 10 and float(model[1]) < 10, lines  # datasets' own retries took ~30 s
    assert "Retrying" not in proc.stderr and "%|" not in proc.stderr, proc.stderr[-2000:]


# ------------------------------------------------------------------------------------------------ tokenizers
def test_tokenizer_without_pad_or_eos_is_refused():
    from jax_cat.sampling import generate
    from tests.sampling.toy_model import ToyLM

    class Bare:
        chat_template = None
        pad_token_id = eos_token_id = None

        def __call__(self, texts, add_special_tokens=True):
            return {"input_ids": [[3] for _ in texts]}

        def decode(self, ids, skip_special_tokens=True):
            return "x" * len(ids)

    toy = ToyLM(np.zeros((8, 8), np.float32), np.zeros((8, 8), np.float32))
    toy.config = type(toy.config)(vocab_size=8)  # no eos/pad in the model config either
    with pytest.raises(ValueError, match=r"eos"):
        generate(toy, Bare(), ["a"], max_new_tokens=2)


def test_unique_names():  # the table's rows are distinct (a copy-paste row would hide a missing case)
    names = list(LOAD_CASES) + list(GENERATE_CASES) + list(EVALUATE_CASES) + list(DATASET_CASES)
    assert len(names) == len(set(names)) and len(names) >= 25, len(names)
