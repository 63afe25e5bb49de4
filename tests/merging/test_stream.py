"""Streaming merges of HF checkpoints: bit-for-bit equal to the in-memory merge, loadable by transformers and by
jax_cat's load_hf, atomic, and refusing mismatched checkpoints with the tensor's name."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import merging
from merging import methods, sparsify as sp, stream, task_vectors as tv
from merging.methods import method_settings
from tests.merging.conftest import assert_bitwise_equal, load_state

F32_SPECS = {
    "task_arithmetic": method_settings("task_arithmetic", coefficients=(0.6, 0.8)),
    "dots": method_settings("dots", coefficients=(0.5, 1.5), density=0.3),
    "dots_global_topk_l1_tensor": method_settings("dots", coefficients=(0.5, 0.5), topk_scope="global", norm="l1", rescale_scope="tensor"),
    "ties": method_settings("ties", coefficients=(1.0, 1.0), density=0.2, scale=0.9),
    "dare": method_settings("dare", coefficients=(0.5, 0.5), density=0.3, seed=11),
    "dare_norm": method_settings("dare", coefficients=(0.5, 0.5), density=0.3, rescale="norm", norm="linf"),
    "breadcrumbs": method_settings("breadcrumbs", coefficients=(0.5, 0.5), density=0.4, top_remove=0.05),
    "ram_plus": method_settings("ram_plus", exclude=r"norm"),
}


def _states(family):
    return load_state(family["base"]), [load_state(family["sft"]), load_state(family["rl"])]


@pytest.mark.parametrize("key", list(F32_SPECS))
def test_streamed_equals_in_memory_bit_for_bit_f32(family_f32, tmp_path, key):
    spec = F32_SPECS[key]
    out = stream.merge_checkpoints(family_f32["base"], [family_f32["sft"], family_f32["rl"]], spec, tmp_path / "m",
                                   progress=False)
    base, fts = _states(family_f32)
    assert_bitwise_equal(load_state(out), methods.merge(base, fts, spec), key)


@pytest.mark.parametrize(
    "spec",
    [
        method_settings("dots", coefficients=(0.5, 0.5), topk_scope="global"),  # two radix passes + a norm pass
        method_settings("ties", coefficients=(0.7, 1.3), topk_scope="global"),
        method_settings("dare", coefficients=(1.0, 1.0), density=0.5, rescale="norm", rescale_scope="global"),
        method_settings("ram", coefficients=(0.5, 2.0), count_scope="tensor"),
    ],
    ids=lambda s: s.name,
)
def test_streamed_equals_in_memory_bf16_tied_sharded(family_bf16_tied_sharded, tmp_path, spec):
    fam = family_bf16_tied_sharded
    assert (fam["base"] / "model.safetensors.index.json").exists()  # sharded input
    out = stream.merge_checkpoints(fam["base"], [fam["sft"], fam["rl"]], spec, tmp_path / "m",
                                   max_shard_size="16KiB", progress=False)
    merged = load_state(out)
    assert "lm_head.weight" not in merged  # tied, like the base
    assert len(json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]) == len(merged)
    assert len(list(out.glob("model-*-of-*.safetensors"))) > 1
    assert all(v.dtype == np.dtype(jnp.bfloat16) for v in merged.values())
    base, fts = _states(fam)
    assert_bitwise_equal(merged, methods.merge(base, fts, spec), spec.name)


def test_in_memory_merge_equals_composed_public_functions(family_f32):
    base, (sft, rl) = _states(family_f32)
    base = {k: jnp.asarray(v) for k, v in base.items()}
    fts = [{k: jnp.asarray(v) for k, v in ft.items()} for ft in (sft, rl)]
    taus = [tv.task_vector(ft, base, dtype=jnp.float32) for ft in fts]
    c = (0.5, 1.5)
    composed = {
        "task_arithmetic": tv.combine(base, taus, c),
        "dots": tv.combine(base, [sp.dots_sparsify(t, 0.3) for t in taus], c),
        "ties": tv.combine(base, [merging.ties(taus, 0.2, coefficients=c)], [0.9]),
        "dare": tv.combine(base, [sp.dare(t, 0.7, seed=11 + i) for i, t in enumerate(taus)], c),
        "breadcrumbs": tv.combine(base, [sp.breadcrumbs(t, 0.4, 0.05) for t in taus], c),
        "ram_plus": tv.combine(base, [merging.ram(taus, rescale_factor=1.2, coefficients=c)], [1.0]),
    }
    specs = {
        "task_arithmetic": method_settings("task_arithmetic", coefficients=c),
        "dots": method_settings("dots", coefficients=c, density=0.3),
        "ties": method_settings("ties", coefficients=c, density=0.2, scale=0.9),
        "dare": method_settings("dare", coefficients=c, density=0.3, seed=11),
        "breadcrumbs": method_settings("breadcrumbs", coefficients=c, density=0.4, top_remove=0.05),
        "ram_plus": method_settings("ram_plus", coefficients=c),
    }
    for key, spec in specs.items():
        assert_bitwise_equal(methods.merge(base, fts, spec), composed[key], key)


def test_dots_merge_matches_independent_numpy_reference(family_f32):
    """DoTS by hand in float64: per-tensor top 30 %, one global L2 factor per task vector, base + sum c_i S(tau_i)."""
    base, fts = _states(family_f32)
    c = (0.5, 1.5)
    expected = {k: np.asarray(v, np.float64) for k, v in base.items()}
    for ci, ft in zip(c, fts):
        taus = {k: ft[k].astype(np.float64) - base[k].astype(np.float64) for k in base}
        kept = {}
        for k, t in taus.items():
            kk = int(0.3 * t.size)
            thr = np.sort(np.abs(t).reshape(-1))[::-1][kk - 1]
            kept[k] = np.where(np.abs(t) >= thr, t, 0.0)
        factor = np.sqrt(sum((t**2).sum() for t in taus.values())) / np.sqrt(sum((t**2).sum() for t in kept.values()))
        for k in base:
            expected[k] += ci * factor * kept[k]
    merged = methods.merge(base, fts, method_settings("dots", coefficients=c, density=0.3))
    for k in base:
        np.testing.assert_allclose(merged[k], expected[k], rtol=2e-6, atol=2e-7, err_msg=k)


def test_transformers_and_load_hf_load_the_merged_checkpoint(family_f32, family_bf16_tied_sharded, tmp_path):
    import torch
    import transformers

    from jax_cat.models import load_hf

    spec = method_settings("dots", coefficients=(0.5, 0.5))
    ids = [[3, 17, 42, 5, 90, 11, 7]]
    for fam, name in ((family_f32, "f32"), (family_bf16_tied_sharded, "bf16")):
        out = stream.merge_checkpoints(fam["base"], [fam["sft"], fam["rl"]], spec, tmp_path / name, progress=False)
        assert (out / "tokenizer_config.json").exists() and (out / "generation_config.json").exists()
        assert json.loads((out / "merge_info.json").read_text())["spec"]["method"] == "dots"
        model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        merged = load_state(out)
        sd = model.state_dict()
        for k, v in merged.items():  # transformers reads exactly the merged tensors
            np.testing.assert_array_equal(sd[k].numpy(), np.asarray(v, np.float32), err_msg=k)
        if name == "bf16":
            assert model.config.tie_word_embeddings
            np.testing.assert_array_equal(sd["lm_head.weight"].numpy(), np.asarray(merged["model.embed_tokens.weight"], np.float32))
        with torch.no_grad():
            ref = model(torch.tensor(ids)).logits.numpy()
        assert np.isfinite(ref).all()
        ours = np.asarray(load_hf(out, dtype=jnp.float32)(jnp.asarray(ids, jnp.int32)))
        np.testing.assert_allclose(ours, ref, rtol=2e-4, atol=2e-4, err_msg=name)


def _copy_with(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_mismatched_checkpoints_are_refused_naming_the_tensor(family_f32, tmp_path):
    base, sft = family_f32["base"], family_f32["sft"]
    spec = method_settings("task_arithmetic")
    name = "model.layers.1.mlp.down_proj.weight"
    cases = {
        "shape": (lambda t: t.__setitem__(name, t[name][:, :-1].copy()), rf"tensor '{name}': shape \(32, 63\)"),
        # (mixed FLOAT dtypes are merged since issue 11: computed in float32, written in the base's dtype)
        "dtype": (lambda t: t.__setitem__(name, t[name].astype(np.int32)), rf"tensor '{name}': dtype I32"),
        "missing": (lambda t: t.pop(name), rf"tensor '{name}' of the base is missing from models\[1\]"),
        "extra": (lambda t: t.__setitem__("model.extra.weight", np.zeros(3, np.float32)),
                  r"tensor 'model.extra.weight' of models\[1\]"),
    }
    for case, (edit, pattern) in cases.items():
        bad = _copy_with(sft, tmp_path / case, edit)
        with pytest.raises(stream.CheckpointMismatchError, match=pattern):
            stream.merge_checkpoints(base, [sft, bad], spec, tmp_path / f"out-{case}", progress=False)
        assert not (tmp_path / f"out-{case}").exists()


def test_tied_model_into_untied_base_and_the_converse(family_f32, family_bf16_tied_sharded, tmp_path):
    base, sft = family_f32["base"], family_f32["sft"]
    tied_sft = _copy_with(sft, tmp_path / "tied", lambda t: t.pop("lm_head.weight"))
    # Issue 11 changed this on purpose: embed_ft - lm_head_base is no fine-tuning update, so it is refused ...
    with pytest.raises(stream.CheckpointMismatchError, match="ties its output head .* but the base has its own"):
        stream.merge_checkpoints(base, [tied_sft], method_settings("task_arithmetic", coefficients=(0.5,)), tmp_path / "o",
                                 progress=False)
    assert not (tmp_path / "o").exists()
    # ... unless the head is excluded (it keeps the base's value) ...
    out = stream.merge_checkpoints(base, [tied_sft], method_settings("task_arithmetic", coefficients=(0.5,), exclude="lm_head"),
                                   tmp_path / "o", progress=False)
    b, s, m = load_state(base), load_state(sft), load_state(out)
    np.testing.assert_array_equal(m["lm_head.weight"], b["lm_head.weight"])
    np.testing.assert_array_equal(m["model.embed_tokens.weight"], b["model.embed_tokens.weight"] + np.float32(0.5) * (
        s["model.embed_tokens.weight"] - b["model.embed_tokens.weight"]))
    # ... or the base's head is its embedding too (a stored copy): then tau_head = embed_ft - embed_base
    tied_base = _copy_with(base, tmp_path / "tied_base",
                           lambda t: t.__setitem__("lm_head.weight", t["model.embed_tokens.weight"].copy()))
    out = stream.merge_checkpoints(tied_base, [tied_sft], method_settings("task_arithmetic", coefficients=(0.5,)),
                                   tmp_path / "o2", progress=False)
    m = load_state(out)
    np.testing.assert_array_equal(m["lm_head.weight"], m["model.embed_tokens.weight"])
    tied = family_bf16_tied_sharded
    with pytest.raises(stream.CheckpointMismatchError, match="has its own 'lm_head.weight' but the base ties it"):
        stream.merge_checkpoints(tied["base"], [sft], method_settings("task_arithmetic"), tmp_path / "x", progress=False)


def test_failure_leaves_nothing_and_existing_output_is_protected(family_f32, tmp_path, monkeypatch):
    fam = family_f32
    out = tmp_path / "merged"
    calls = {"n": 0}
    original = stream.ShardedWriter.write

    def failing_write(self, name, array):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("disk full (simulated)")
        return original(self, name, array)

    monkeypatch.setattr(stream.ShardedWriter, "write", failing_write)
    with pytest.raises(RuntimeError, match="simulated"):
        stream.merge_checkpoints(fam["base"], [fam["sft"]], method_settings("task_arithmetic"), out, progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temp folder
    monkeypatch.setattr(stream.ShardedWriter, "write", original)
    stream.merge_checkpoints(fam["base"], [fam["sft"]], method_settings("task_arithmetic"), out, progress=False)
    with pytest.raises(FileExistsError, match="overwrite"):
        stream.merge_checkpoints(fam["base"], [fam["sft"]], method_settings("task_arithmetic"), out, progress=False)
    stream.merge_checkpoints(fam["base"], [fam["rl"]], method_settings("task_arithmetic"), out, overwrite=True,
                             progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]
    assert json.loads((out / "merge_info.json").read_text())["models"] == [str(fam["rl"])]


def test_merge_cli_equals_api(family_f32, tmp_path):
    from merging.merge import main

    fam = family_f32
    args = ["--base", str(fam["base"]), "--models", str(fam["sft"]), str(fam["rl"]), "--method", "dots",
            "--coeffs", "0.5", "1.5", "--density", "0.3", "--scope", "global", "--norm", "l2", "--no-progress",
            "--max-shard-size", "40KB", "--out", str(tmp_path / "cli")]
    assert main(args) == 0
    base, fts = _states(fam)
    assert_bitwise_equal(load_state(tmp_path / "cli"), methods.merge(base, fts, method_settings("dots", coefficients=(0.5, 1.5))))
    assert main(args[:-2]) == 2  # --out is required: one line, exit 2 (returned, as jax_cat's CLIs do)


def test_analyze_cli_writes_table_json_and_plots(family_f32, tmp_path, capsys):
    from merging import analysis
    from merging.analyze import main

    fam = family_f32
    assert main(["--base", str(fam["base"]), "--sft", str(fam["sft"]), "--rl", str(fam["rl"]), "--out",
                 str(tmp_path / "report"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "ratio L2 sft/rl" in printed and "sign conflict" in printed
    report = json.loads((tmp_path / "report" / "analysis.json").read_text())
    for png in ("layer_magnitude.png", "sign_conflict.png", "module_mass.png"):
        assert (tmp_path / "report" / png).read_bytes()[:4] == b"\x89PNG"
    base, (sft, rl) = _states(fam)
    taus = [{k: ft[k].astype(np.float32) - base[k] for k in base} for ft in (sft, rl)]
    ref = analysis.compare(taus[0], taus[1], labels=("sft", "rl")).total()
    assert report["global"]["ratio_l2"] == pytest.approx(ref.ratio_l2, rel=1e-12)
    assert report["global"]["conflict_rate"] == pytest.approx(ref.conflict_rate, rel=1e-12)
    assert set(report["per_module"]) >= {"q", "k", "v", "o", "gate", "up", "down", "embed", "lm_head", "norm"}
    assert report["global"]["ratio_l2"] == pytest.approx(4.0 * np.sqrt(10), rel=0.15)  # 0.02 dense vs 0.005 on 10 %
