"""Merge precision (issue 20): merges are computed in float32 and rounded once to the output dtype the user
chooses; when that dtype puts the update back on the base's values, a warning says for how many entries.

Hand-checkable numbers: bfloat16 has 8 significant bits, so next to 1.0 its spacing is 2^-7 and next to 2.0 it is
2^-6. An update of 2^-10 or 2^-9 at 1.0 rounds back to 1.0 (lost); 2^-6 at 1.0 and 2^-5 at 2.0 are representable.
"""
from __future__ import annotations

import json
import warnings

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from merging.merge import main
from merging.methods import method_settings
from merging.methods.engine import merge
from merging.stream import PrecisionWarning, merge_checkpoints

BF16 = ml_dtypes.bfloat16
BASE = np.asarray([1.0, 1.0, 1.0, 1.0, 2.0, 2.0], np.float32)
FT = np.asarray([1 + 2**-10, 1 + 2**-6, 1.0, 1 + 2**-9, 2 + 2**-5, 2.0], np.float32)  # 4 entries changed


def _write(root, name, tensor):
    (root / name).mkdir(parents=True)
    save_file({"w": tensor}, str(root / name / "model.safetensors"), metadata={"format": "pt"})
    return root / name


def _read(path):
    with safe_open(str(path / "model.safetensors"), "numpy") as f:
        return f.get_tensor("w")


@pytest.fixture()
def ckpts(tmp_path):
    return _write(tmp_path, "base", BASE.astype(BF16)), _write(tmp_path, "ft", FT)


def test_float32_update_into_bf16_base_warns_with_the_fraction(tmp_path, ckpts):
    base, ft = ckpts
    with pytest.warns(PrecisionWarning, match=r"^50\.0 % of the 4 entries the merge changed round back to the base's "
                      r"value in the base's dtype .*dtype='float32' / --dtype float32"):
        out = merge_checkpoints(base, [ft], method_settings("task_arithmetic"), tmp_path / "bf16", progress=False)
    got = _read(out)
    assert got.dtype == BF16
    assert got.astype(np.float32).tolist() == [1.0, 1 + 2**-6, 1.0, 1.0, 2 + 2**-5, 2.0]
    info = json.loads((out / "merge_info.json").read_text())
    assert info["rounding"] == {"changed": 4, "rounded_back_to_base": 2} and info["dtype"] == "base"


def test_float32_output_keeps_the_update_and_does_not_warn(tmp_path, ckpts):
    base, ft = ckpts
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrecisionWarning)
        out = merge_checkpoints(base, [ft], method_settings("task_arithmetic"), tmp_path / "f32", dtype="float32",
                                progress=False)
    got = _read(out)
    assert got.dtype == np.float32 and got.tolist() == FT.tolist()
    assert json.loads((out / "merge_info.json").read_text())["rounding"] == {"changed": 4, "rounded_back_to_base": 0}


def test_merged_in_float32_then_rounded_once():
    # two bf16 fine-tunes, task vectors [2^-6, 2^-7], coefficients 0.25 each: the float32 sums are 1 + 2^-7
    # (representable) and 1 + 2^-8 (halfway between 1 and 1 + 2^-7: to nearest even, 1.0). Rounding to bf16 after
    # each term would lose the first one too (1 + 2^-8 -> 1, twice).
    base = np.asarray([1.0, 1.0], np.float32).astype(BF16)
    fts = [{"w": np.asarray([1 + 2**-6, 1 + 2**-7], np.float32).astype(BF16)} for _ in range(2)]
    spec = method_settings("task_arithmetic", coefficients=(0.25, 0.25))
    out = np.asarray(merge({"w": base}, fts, spec)["w"])
    assert out.dtype == BF16 and out.astype(np.float32).tolist() == [1 + 2**-7, 1.0]
    out32 = np.asarray(merge({"w": base}, fts, spec, dtype=np.float32)["w"])
    assert out32.dtype == np.float32 and out32.tolist() == [1 + 2**-7, 1 + 2**-8]


def test_bf16_into_bf16_with_representable_updates_does_not_warn(tmp_path):
    base = _write(tmp_path, "base", BASE.astype(BF16))
    ft = _write(tmp_path, "ft", FT.astype(BF16))  # the fine-tune's own bf16 values: representable by construction
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrecisionWarning)
        merge_checkpoints(base, [ft], method_settings("task_arithmetic"), tmp_path / "out", progress=False)


def test_cli_dtype_flag_and_warning_line(tmp_path, ckpts, capsys):
    base, ft = ckpts
    argv = ["--base", str(base), "--models", str(ft), "--method", "task_arithmetic", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert err.startswith("python -m merging.merge: warning: 50.0 % of the 4 entries the merge changed round back")
    assert main([*argv, "--dtype", "float32", "--out", str(tmp_path / "b")]) == 0
    assert "warning" not in capsys.readouterr().err and _read(tmp_path / "b").dtype == np.float32
    assert main([*argv, "--dtype", "float8", "--out", str(tmp_path / "c")]) == 2  # argparse's error: one line
    assert "invalid choice: 'float8'" in capsys.readouterr().err


def test_output_dtype_applies_to_unselected_float_tensors_and_not_to_integers(tmp_path):
    base = {"w": np.asarray([1.0, 2.0], np.float32).astype(BF16), "skip": np.asarray([3.0], np.float32).astype(BF16),
            "step": np.asarray([7], np.int32)}
    ft = {"w": np.asarray([1.5, 2.0], np.float32), "skip": np.asarray([4.0], np.float32),
          "step": np.asarray([7], np.int32)}
    out = merge(base, [ft], method_settings("task_arithmetic", exclude="skip"), dtype=np.float32)
    assert np.asarray(out["w"]).dtype == np.float32 and np.asarray(out["w"]).tolist() == [1.5, 2.0]
    assert np.asarray(out["skip"]).dtype == np.float32 and np.asarray(out["skip"]).tolist() == [3.0]  # the base's
    assert np.asarray(out["step"]).dtype == np.int32
