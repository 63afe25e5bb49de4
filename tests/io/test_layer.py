"""The shared low layer (`jax_cat.io`) and what is built on it: atomic writes on a full disk, figures, the
safetensors reader and writer both packages use, model resolution, and `DotsConfig` as the one record of
`merging.dots`' flags."""
from __future__ import annotations

import dataclasses
import errno
import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jax_cat.io.atomic import atomic_write, clean_stale_temporaries, save_figure
from jax_cat.io.safetensors import Checkpoint, CheckpointError, ShardedWriter


# ------------------------------------------------------------------------------------------------ atomic
def test_a_full_disk_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old\n")

    def half_then_full(tmp: Path) -> None:
        tmp.write_text('{"half": ')
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, half_then_full)
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_stale_temporaries_of_dead_writers_only_are_removed(tmp_path):
    import os
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (tmp_path / f"trials.json.tmp-{dead}-abcd1234").write_text("x")    # a killed writer's
    (tmp_path / f".config.json.tmp-{dead}").write_text("x")            # the older spelling
    (tmp_path / f"trials.csv.tmp-{os.getpid()}-abcd1234").write_text("x")  # ours: alive
    (tmp_path / "trials.json").write_text("[]")
    removed = clean_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted([f"trials.json.tmp-{dead}-abcd1234", f".config.json.tmp-{dead}"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["trials.json", f"trials.csv.tmp-{os.getpid()}-abcd1234"])


def test_save_figure_writes_a_png_of_the_asked_size_and_closes_the_figure(tmp_path):
    plt = pytest.importorskip("matplotlib.pyplot")
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / "sub" / "plot.png", dpi=50)
    assert path == tmp_path / "sub" / "plot.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plt.imread(path).shape[:2] == (100, 150)  # 2 x 3 inches at 50 dpi
    assert not plt.fignum_exists(fig.number)
    assert [p.name for p in path.parent.iterdir()] == ["plot.png"]


def test_a_failed_save_figure_keeps_the_old_file_and_still_closes_the_figure(tmp_path):
    plt = pytest.importorskip("matplotlib.pyplot")
    target = tmp_path / "plot.png"
    target.write_bytes(b"old")
    fig, _ = plt.subplots()
    with pytest.raises(ValueError):
        save_figure(fig, target, format="no-such-format")
    assert target.read_bytes() == b"old"
    assert not plt.fignum_exists(fig.number)
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]


# ------------------------------------------------------------------------------------------------ safetensors
def test_sharded_writer_output_is_what_safetensors_reads(tmp_path):
    """Planned shards (a tensor larger than the shard size gets its own), the index, dtypes incl. bf16, row blocks;
    compared with safetensors' own reader, and read back by `Checkpoint`."""
    rng = np.random.default_rng(0)
    tensors = {"model.layers.10.w": rng.standard_normal((6, 4)).astype(np.float32),
               "model.layers.2.w": rng.standard_normal((3, 4)).astype(ml_dtypes.bfloat16),
               "model.embed_tokens.weight": rng.standard_normal((40, 4)).astype(np.float16)}
    writer = ShardedWriter(tmp_path, [(n, t.dtype, t.shape) for n, t in tensors.items()], max_shard_bytes=100)
    for name, t in tensors.items():
        if name == "model.layers.10.w":
            writer.write(name, t[:2])
            writer.write(name, t[2:])
        else:
            writer.write(name, t)
    writer.close()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    got = {}
    for f in sorted(tmp_path.glob("model-*.safetensors")):
        got.update(load_file(str(f)))
    for name, t in tensors.items():
        np.testing.assert_array_equal(got[name].view(np.uint8), t.view(np.uint8))
    ckpt = Checkpoint(tmp_path)
    assert ckpt.names == ["model.embed_tokens.weight", "model.layers.2.w", "model.layers.10.w"]
    assert ckpt.info["model.layers.2.w"].dtype == "BF16" and ckpt.shapes["model.layers.10.w"] == (6, 4)
    np.testing.assert_array_equal(ckpt.get_rows("model.layers.10.w", 4, 99), tensors["model.layers.10.w"][4:])


def test_one_tensor_in_two_unindexed_files_is_refused(tmp_path):
    """Several *.safetensors without an index (as both loaders accept): a name in two files is an error naming it,
    not the last file silently winning (what load_hf did before the reader was shared)."""
    save_file({"w": np.zeros(2, np.float32)}, str(tmp_path / "a.safetensors"))
    save_file({"w": np.ones(2, np.float32)}, str(tmp_path / "b.safetensors"))
    with pytest.raises(CheckpointError, match=r"tensor 'w' appears in two files .*a\.safetensors and b\.safetensors"):
        Checkpoint(tmp_path)


def test_save_hf_shards_are_read_by_the_merging_reader(tmp_path):
    """One reader and one writer: a save_hf checkpoint in several shards has the same tensors through merging's
    `Checkpoint` as through load_hf."""
    from jax_cat.models import load_hf, save_hf
    from jax_cat.models.hf import iter_hf_tensors
    from jax_cat.models.tiny import build_tiny_checkpoint

    model = load_hf(build_tiny_checkpoint(tmp_path / "tiny", seed=3))
    out = save_hf(model, tmp_path / "sharded", max_shard_bytes=20_000)
    assert (out / "model.safetensors.index.json").exists()
    ckpt = Checkpoint(out)
    expected = dict(iter_hf_tensors(model))
    assert sorted(ckpt.names) == sorted(expected)
    for name, t in expected.items():
        np.testing.assert_array_equal(ckpt.get(name), t)


# ------------------------------------------------------------------------------------------------ model resolution
def test_resolve_model_names_the_setting(tmp_path, monkeypatch):
    from jax_cat.models.resolve import resolve_model
    from jax_cat.training.config import ConfigError
    from jax_cat.training.runtime import model_path

    (tmp_path / "afile").write_text("x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotADirectoryError, match=r"--model=.*afile' is a file; give an HF-format"):
        resolve_model(tmp_path / "afile")
    with pytest.raises(FileNotFoundError, match=r"--model=.*empty': no config.json there"):
        resolve_model(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"--model='\./nowhere': no such folder"):
        resolve_model("./nowhere")
    with pytest.raises(ConfigError, match=r"model.path=.*empty': no config.json there"):
        model_path(str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match=r"model.path='a/b/c': no such folder"):
        model_path("a/b/c")


# ------------------------------------------------------------------------------------------------ DotsConfig
def test_every_dots_flag_is_a_config_field_with_the_same_default():
    from merging.dots import build_parser, config_from_args
    from merging.dots_config import DotsConfig

    args = build_parser().parse_args(["--base", "b", "--sft", "s", "--rl", "r", "--queries", "q", "--out", "o"])
    assert config_from_args(args) == DotsConfig()
    run_args = {"base", "sft", "rl", "queries", "out", "debug", "no_progress"}
    flags = set(vars(args)) - run_args
    fields = {f.name for f in dataclasses.fields(DotsConfig)} - {"progress"}
    assert flags == fields


def test_dots_config_is_checked_and_records_the_study_as_before():
    from merging.dots_config import DotsConfig

    with pytest.raises(ValueError, match=r"--search-density must be in \(0, 1\], got 0"):
        DotsConfig(search_density=(0.2, 0))
    with pytest.raises(ValueError, match="--vote-strategy maj@9 needs 9 samples but --votes is 7"):
        DotsConfig(vote_strategy="maj@9")
    with pytest.raises(ValueError, match="--designer must be one of"):
        DotsConfig(designer="GRID")
    config = DotsConfig(rescale=True, search_density=[0.2, 0.4], coeff_range=[0.5, 1.5])
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.trials = 3  # type: ignore[misc]
    record = config.study_record(base="b", sft=Path("s"), rl="r", queries="q.txt")
    assert record["rescale"] == "on" and record["search_density"] == [0.2, 0.4] and record["coeff_range"] == [0.5, 1.5]
    assert record["sft"] == "s" and DotsConfig().study_record(base="b", sft="s", rl="r", queries="q")[
        "search_density"] is None  # the spellings config.json has always had: a resumed older run still matches
