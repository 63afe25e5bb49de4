"""The merging CLIs on bad input: one line on stderr naming the problem and the fix, exit status 2, no traceback
(unless --debug), no output or temporary left behind. In process (`main(argv)`) with capsys."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from merging import analyze, merge

W = "model.layers.0.mlp.up_proj.weight"


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    base = {W: rng.standard_normal((8, 8)).astype(np.float32)}
    out = {}
    for name, tensors in (("base", base), ("sft", {W: base[W] + 0.01}), ("rl", {W: base[W] - 0.01}),
                          ("nan", {W: np.where(np.eye(8) > 0, np.nan, base[W]).astype(np.float32)}),
                          ("wide", {W: rng.standard_normal((8, 9)).astype(np.float32)})):
        (root / name).mkdir()
        save_file(tensors, str(root / name / "model.safetensors"), metadata={"format": "pt"})
        out[name] = root / name
    (root / "junk").mkdir()
    (root / "junk" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    out["junk"] = root / "junk"
    out["root"] = root
    return out


def _merge_args(c, *extra, models=("sft", "rl"), out="out"):
    return ["--base", str(c["base"]), "--models", *[str(c[m]) for m in models], "--no-progress",
            "--out", str(c["root"] / out), *extra]


BAD_MERGES = {
    "coefficients count": (("--method", "dots", "--coeffs", "1"), "2 --models but 1 --coefficients; give one"),
    "option of another method": (("--method", "task_arithmetic", "--density", "0.3"),
                                 "--density has no effect with --method task_arithmetic; drop it"),
    "lam outside ties": (("--method", "dots", "--lam", "0.5"), "--scale has no effect with --method dots"),
    "density out of range": (("--method", "dots", "--density", "1.5"), r"density must be in \(0, 1\], got 1.5"),
    "unknown method": (("--method", "dotz",), "invalid choice: 'dotz'"),
    "not a number": (("--method", "dots", "--density", "lots"), "argument --density: invalid float value"),
    "bad shard size": (("--method", "dots", "--max-shard-size", "big"), "cannot parse size 'big'"),
    "dare norm with inverse": (("--method", "dare", "--norm", "l1"), "dare with rescale='inverse': norm has no effect"),
}


@pytest.mark.parametrize("case", list(BAD_MERGES))
def test_merge_cli_bad_options(ckpts, capsys, case):
    extra, message = BAD_MERGES[case]
    assert merge.main(_merge_args(ckpts, *extra)) == 2  # argparse's own errors too: one line, exit 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m merging.merge: error: "), err
    assert re.search(message, err[0]), err
    assert "Traceback" not in err[0]
    assert not (ckpts["root"] / "out").exists()


BAD_INPUTS = {
    "missing base": (lambda c: ["--base", str(c["root"] / "nope")], "no checkpoint at .*nope: give a folder"),
    "corrupt safetensors": (lambda c: ["--models", str(c["junk"])], "cannot read safetensors file .*junk"),
    "shape mismatch": (lambda c: ["--models", str(c["wide"])], rf"tensor '{W}': shape \(8, 9\) in models\[0\]"),
    "nan weights": (lambda c: ["--models", str(c["nan"])], rf"tensor '{W}' of models\[0\] .* holds 8 NaN.*"
                                                           "--allow-nonfinite"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_merge_cli_bad_checkpoints(ckpts, capsys, case):
    edit, message = BAD_INPUTS[case]
    args = _merge_args(ckpts, "--method", "task_arithmetic", models=("sft",))
    override = edit(ckpts)
    key = override[0]
    args[args.index(key) + 1] = override[1]
    assert merge.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m merging.merge: error: "), err
    assert re.search(message, err[0]), err
    assert sorted(p.name for p in ckpts["root"].iterdir() if p.name.startswith("out")) == []


def test_merge_cli_debug_shows_the_traceback_and_existing_output_is_named(ckpts, capsys):
    args = _merge_args(ckpts, "--method", "dots", "--coeffs", "1", "--debug")
    assert merge.main(args) == 2  # the same status as without --debug, the traceback printed before the line
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and err.strip().splitlines()[-1].startswith("python -m merging.merge: error:")
    assert "coefficient" in err.strip().splitlines()[-1]
    ok = _merge_args(ckpts, "--method", "task_arithmetic", models=("sft",), out="done")
    assert merge.main(ok) == 0
    assert merge.main(ok) == 2
    assert "exists (pass overwrite=True / --overwrite to replace it)" in capsys.readouterr().err


def test_analyze_cli_bad_inputs(ckpts, capsys):
    base, sft, rl = (str(ckpts[n]) for n in ("base", "sft", "rl"))
    cases = [
        (["--base", base, "--sft", sft, "--rl", str(ckpts["nan"])], r"holds 8 NaN"),
        (["--base", base, "--sft", sft, "--rl", rl, "--top-fraction", "0"], r"--top-fraction must be in \(0, 1\]"),
        (["--base", base, "--sft", str(ckpts["wide"]), "--rl", rl], r"shape \(8, 9\) in sft"),
    ]
    for argv, message in cases:
        assert analyze.main([*argv, "--no-progress"]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("python -m merging.analyze: error: ") and re.search(message, err[0])
    assert analyze.main(["--base", base]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the following arguments are required: --sft, --rl" in err[0]
