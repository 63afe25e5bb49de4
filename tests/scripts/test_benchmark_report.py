"""benchmarks/report.py's logic on canned benchmark outputs (nothing is run): goal verdicts, "not measured" rows, both
sampling.py output formats, the --from re-render; and benchmarks/accelerator.py's device table and counts."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from tests._load_script import load_script


report = load_script("benchmarks/report.py", register=True)
acc = load_script("benchmarks/accelerator.py", register=True)

OLD_TABLE = """batch 8, prompt 64 tokens, 128 new tokens (greedy), median of 5 after a warm-up
| shape | params | jax-cat tok/s | transformers tok/s | ratio | jax compile s | peak RSS jax / torch MiB | same tokens | torch threads |
|---|---|---|---|---|---|---|---|---|
| qwen2-40m | 39.3M | 240 | 192 | 1.25x | 7.0 | 543.0 / 563.0 | 8/8 rows | 1 |
"""
NEW_TABLE = """batch 8, prompt 768 tokens, 512 new tokens (greedy); 1 thread(s) a side pinned to CPUs 0
| shape | params | jax variant | jax tok/s | torch tok/s | ratio wall | ratio CPU-s | jax compile s | peak RSS jax / torch MiB | same tokens |
|---|---|---|---|---|---|---|---|---|---|
| qwen2-40m | 39.3M | default | 350 | 185 | 1.89x | 1.95x | 1.9 | 1,424 / 786 | 8/8 rows |
"""


def _train(sft_trainer, grpo_trainer):
    def kind(wall, cpu):
        return dict(torch=dict(tok_s=800.0), variants=dict(
            trainer=dict(ratio_wall=wall, ratio_cpu=cpu, rounds_wall=[wall - 0.02, wall, wall + 0.02]),
            trainer_scan=dict(ratio_wall=1.30, ratio_cpu=1.40, rounds_wall=[1.3])))
    return dict(json=dict(kinds=dict(sft=kind(*sft_trainer), grpo=kind(*grpo_trainer))))


def _plan(cpu_by_depth, wall28):
    return dict(json=[dict(layers=d, compile_s=wall28 if d == 28 else 5.0, compile_cpu_s=c)
                      for d, c in cpu_by_depth.items()])


CANNED = {
    "train_1core": _train((1.24, 1.33), (1.10, 1.25)),
    "train_2cores": dict(error="exit code 1: RuntimeError: torch sft  worker failed"),
    "decode_b8": dict(stdout=OLD_TABLE),
    "decode_b64": dict(json=[dict(ratio_wall=4.5, ratio_cpu=4.1, jax=dict(tok_s=2000.0, peak_rss_mib=700.0),
                                  torch=dict(tok_s=444.0, peak_rss_mib=800.0))]),
    "decode_long": dict(stdout=NEW_TABLE),
    "compile_train": _plan({4: 7.4, 14: 7.4, 28: 7.5}, 12.0),
    "compile_sampler": _plan({4: 3.0, 28: 6.0}, 75.0),
    "accelerator": dict(json=dict(backend="cpu", device_kind="cpu", not_measured="no accelerator (CPU only)")),
}


def _by_figure(rows):
    return {r.figure: r for r in rows}


def test_verdicts_on_a_canned_result_set():
    rows = report.build_rows(CANNED, {k: f"cmd-{k}" for k in CANNED})
    assert len(rows) == 4 + 3 + 4 + 2
    verdicts = [r.verdict for r in rows]
    # train, 1 core: SFT 1.24x >= 1.2 met; GRPO 1.10x wall not met (its 1.25x CPU-s does not count)
    assert verdicts[:2] == ["met", "not met"]
    assert "1.24x wall, 1.33x CPU-s" in rows[0].measured and "scanned layers 1.30x / 1.40x" in rows[0].measured
    # train, 2 cores: the run failed -> both rows say so, with the error
    for r in rows[2:4]:
        assert r.verdict.startswith("not measured: benchmark failed (exit code 1") and r.measured == "-"
    # decode B=8 from the old stdout table: 1.25x < 4; B=64 from --json: 4.5x >= 4
    assert rows[4].verdict == "not met" and rows[4].measured.startswith("1.25x wall (240 vs 192")
    assert rows[5].verdict == "met" and "4.50x wall, 4.10x CPU-s" in rows[5].measured
    # long-context peak RSS from the new table: 1424 > 786 MiB
    assert rows[6].verdict == "not met" and rows[6].measured.startswith("1,424 / 786 MiB (1.81x)")
    # compile, train: 12 s < 60 and 7.5/7.4 flat; sampler: 75 s, and 6.0/3.0 = 2.0 > 1.5
    assert verdicts[7:11] == ["met", "met", "not met", "not met"]
    assert "(28/4: 1.01x)" in rows[8].measured and "(28/4: 2.00x)" in rows[10].measured
    # accelerator on a CPU backend
    assert verdicts[11:] == ["not measured: no accelerator (CPU only)"] * 2
    assert [r.command for r in rows[:2]] == ["cmd-train_1core"] * 2


def test_rows_of_groups_not_run_and_of_a_measured_accelerator():
    results = {"accelerator": dict(json=dict(
        backend="gpu", peaks=dict(name="NVIDIA H200 (SXM)", peak_flops=989e12, hbm_bytes_s=4.8e12),
        mfu=dict(mfu=0.5, achieved_flops=494.5e12, batch=8, seq=2048),
        decode=dict(hbm_fraction=0.6, achieved_bytes_s=2.88e12, step_s=0.0004)))}
    rows = report.build_rows(results, {})
    assert all(r.verdict == "not measured: not run (--only)" for r in rows[:-2])
    assert [r.verdict for r in rows[-2:]] == ["met", "not met"]
    assert rows[-2].measured.startswith("50.0% (494 of 989 TFLOP/s")


def test_unreadable_output_and_missing_depths_are_not_measured():
    results = {"decode_b8": dict(stdout="no table here\n"), "compile_train": _plan({14: 7.0}, 9.0)}
    rows = _by_figure(report.build_rows(results, {}))
    b8 = next(r for f, r in rows.items() if "B=8, 64 + 128" in f)
    assert b8.verdict.startswith("not measured: unreadable output")
    flat = next(r for f, r in rows.items() if f.startswith("Compile time vs depth") and "train" in f)
    assert flat.verdict == "not measured: needs the 4- and 28-layer results"


def test_from_rerenders_a_saved_report(tmp_path, capsys):
    saved = dict(header="canned header", results=CANNED, commands={k: f"cmd-{k}" for k in CANNED})
    path = tmp_path / "report.json"
    path.write_text(json.dumps(saved))
    assert report.main(["--from", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("canned header")
    assert "| figure | measured | goal | verdict | command |" in out
    assert out.strip().endswith("4 met, 5 not met, 4 not measured (of 13)")


def test_quick_runs_fewer_rounds_and_depths():
    quick, full = report.plan_runs(True), report.plan_runs(False)
    assert [r.key for r in quick] == [r.key for r in full]
    q, f = {r.key: r.args for r in quick}, {r.key: r.args for r in full}
    assert q["train_1core"][q["train_1core"].index("--rounds") + 1] == "1"
    assert f["train_1core"][f["train_1core"].index("--rounds") + 1] == "3"
    assert f["compile_train"][f["compile_train"].index("--depths") + 1] == "4,14,28"
    assert "--cpus" in f["train_2cores"] and f["train_2cores"][f["train_2cores"].index("--threads") + 1] == "2"


def test_accelerator_device_table_and_counts():
    h200 = acc.device_peaks("NVIDIA H200")
    assert (h200["peak_flops"], h200["hbm_bytes_s"]) == (989e12, 4.8e12)
    assert acc.device_peaks("NVIDIA H100 80GB HBM3")["hbm_bytes_s"] == 3.35e12
    assert acc.device_peaks("TPU v5 lite")["name"] == "TPU v5e"
    assert acc.device_peaks("TPU v5")["name"] == "TPU v5p"
    assert acc.device_peaks("Some New Chip") is None
    assert acc.device_peaks("Some New Chip", 100, 1000)["peak_flops"] == 100e12
    assert acc.device_peaks("NVIDIA H200", hbm_gbps=4000)["hbm_bytes_s"] == 4e12
    cfg = SimpleNamespace(tie_word_embeddings=False, vocab_size=100, hidden_size=8, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    # untied: the 800 input-embedding parameters do no matmul; attention 12 * 2 layers * 32 * 4 heads * 16
    assert acc.train_flops_per_token(cfg, 10_800, 64) == 6 * 10_000 + 12 * 2 * 32 * 4 * 16
    # decode: 10,000 bf16 weights + K and V of 2 layers x 2 kv heads x 16 dims x 2 bytes at 100 tokens
    assert acc.decode_bytes_per_step(cfg, 10_800, 100) == 20_000 + 2 * 2 * 2 * 16 * 2 * 100


ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
stepping\t: 1
flags\t\t: fpu sse sse2 avx fma avx2 hypervisor bmi2

processor\t: 1
vendor_id\t: AuthenticAMD
"""
ZEN4 = ZEN3.replace("model\t\t: 1\n", "model\t\t: 17\n").replace("avx2 ", "avx2 avx512f avx512bw avx512_bf16 ")


def test_cpu_info_names_the_host_behind_a_masked_model_name():
    zen3, zen4 = report.cpu_info(ZEN3), report.cpu_info(ZEN4)
    assert (zen3["model"], zen3["uarch"], zen3["isa"], zen3["hypervisor"]) == ("AMD EPYC", "Zen 3 (Milan)", "avx2", True)
    assert zen3["flags"] == ["avx", "avx2", "fma"]
    assert (zen4["uarch"], zen4["isa"]) == ("Zen 4 (Genoa)", "avx512")
    assert {"avx512f", "avx512_bf16"} <= set(zen4["flags"])
    assert report.run_threads("x.py --threads 1 --cpus 0")["xla"].startswith("--xla_cpu_multi_thread_eigen=false")
    assert report.run_threads("x.py --threads 2 --cpus 0,1") == dict(threads=2, cpus="0,1")


def _machine(cpuinfo):
    return dict(cpu=dict(report.cpu_info(cpuinfo), cpus=2), libraries=dict(jax="0.10.2", torch="2.13.0"),
                torch=dict(capability="AVX2"), commit="abc123", dirty=False, env={})


def test_rows_carry_their_machine_and_the_docs_table_gives_ranges(tmp_path, capsys):
    commands = {k: f"cmd-{k} --threads 1 --cpus 0" for k in CANNED}
    results = tmp_path / "results.jsonl"
    for cpuinfo, sft, date in ((ZEN4, (1.30, 1.32), "d1"), (ZEN3, (0.70, 0.71), "d2"), (ZEN3, (0.62, 0.66), "d3")):
        canned = dict(CANNED, train_1core=_train(sft, (1.10, 1.25)))
        rows = report.with_context(report.build_rows(canned, commands), _machine(cpuinfo), commands, dict(date=date))
        sft_row = rows[0]
        assert (sft_row.value, sft_row.value_cpu) == sft
        ctx = sft_row.context
        assert ctx["cpu"]["model"] == "AMD EPYC" and ctx["libraries"]["jax"] == "0.10.2" and ctx["commit"] == "abc123"
        assert ctx["threads"]["threads"] == 1 and ctx["threads"]["cpus"] == "0" and ctx["date"] == date
        # not-measured rows are not results
        assert report.append_results(results, rows) == sum(r.value is not None for r in rows) < len(rows)
    table = report.render_ranges(report.read_results(results))
    sft_line = next(ln for ln in table.splitlines() if ln.startswith("| Train step SFT") and "1 core" in ln)
    assert "| 0.62-1.30 (0.66-1.32) |" in sft_line
    assert "Zen 4 (Genoa), avx512, 2 CPUs: 1.30 (1.32), 1 run" in sft_line
    assert "Zen 3 (Milan), avx2, 2 CPUs: 0.62-0.70 (0.66-0.71), 2 runs" in sft_line
    doc = tmp_path / "bench.md"
    doc.write_text(f"intro\n{report.DOCS_BEGIN}\nold table\n{report.DOCS_END}\nafter\n")
    assert report.main(["--docs", str(results), "--docs-into", str(doc)]) == 0
    text = doc.read_text()
    assert "old table" not in text and sft_line in text and text.startswith("intro\n") and text.endswith("after\n")
    doc.write_text("no markers\n")
    with pytest.raises(ValueError, match="markers"):
        report.update_docs(doc, table)


def test_add_imports_a_benchmark_json_with_this_machine(tmp_path, capsys):
    train = tmp_path / "train.json"
    train.write_text(json.dumps(dict(_train((0.41, 0.70), (0.5, 0.8))["json"], rounds=2, repeats=3, threads=1,
                                     cpus="0")))
    results = tmp_path / "r.jsonl"
    assert report.main(["--add", f"train_1core={train}", "--commit", "dae0d39", "--date", "d0", "--results",
                        str(results)]) == 0
    recs = report.read_results(results)
    assert [r["value_cpu"] for r in recs] == [0.70, 0.8]
    assert all(r["context"]["commit"] == "dae0d39" and r["context"]["date"] == "d0" for r in recs)
    assert recs[0]["context"]["cpu"]["model"] == report.cpu_info()["model"]
    assert "imported from" in recs[0]["command"] and recs[0]["context"]["threads"]["threads"] == 1
