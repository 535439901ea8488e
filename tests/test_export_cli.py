"""``vdot export``: diffusers pipeline folders, original Wan files and vdot-jax model directories, checked against
diffusers itself; a training workdir as the source; the command's refusals.

A tiny random ``WanVACEPipeline`` (transformer, VAE with z_dim 4, umT5, a WordLevel tokenizer) is saved and
converted once per module (``vdot convert``); the "student" is that model directory, or the model of a 2-step
flow-matching run of ``configs/tiny.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

from oracles import run_diffusers, state_numpy, tiny_vace_pipeline  # noqa: E402
from vdot_jax.cli import main as vdot  # noqa: E402
from vdot_jax.models.config import WanConfig  # noqa: E402
from vdot_jax.weights.checkpoint_io import open_tensors  # noqa: E402
from vdot_jax.weights.params import flat_state  # noqa: E402

T, H, W, Z = 5, 32, 32, 4
DIT = WanConfig(dim=32, ffn_dim=40, num_heads=2, num_layers=4, in_channels=Z, out_channels=Z, text_dim=32,
                freq_dim=32, rope_max_seq_len=64, vace_layers=(0, 2), vace_in_channels=2 * Z + 64)
WORDS = "a the cat dog runs on grass red blue sky".split()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """(diffusers WanVACEPipeline with flow shift 3, its folder, our converted model directory)."""
    return tiny_vace_pipeline(tmp_path_factory.mktemp("export_cli"), DIT, WORDS, latents_mean=[0.1, -0.2, 0.3, 0.0],
                              latents_std=[0.5, 1.0, 1.5, 2.0], shift=3.0)


def _same_state(a: dict, b: dict, what: str) -> None:
    assert set(a) == set(b), f"{what}: {sorted(set(a) ^ set(b))[:5]}"
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"{what}: {k}")


def test_pipeline_folder_loads_in_diffusers_and_generates_what_we_generate(source, tmp_path, capsys):
    from diffusers import UniPCMultistepScheduler, WanVACEPipeline

    from vdot_jax import conditions as C
    from vdot_jax.sampling.pipeline import Pipeline

    pipe, _, model_dir = source
    out = tmp_path / "exported"
    assert vdot(["export", "--ckpt", str(model_dir), "--format", "diffusers", "--out", str(out),
                 "--text-encoder-dtype", "float32", "--max-shard-size", "20KB"]) == 0
    assert "WanVACEPipeline folder" in capsys.readouterr().out
    index = json.loads((out / "model_index.json").read_text())
    original = json.loads((source[1] / "model_index.json").read_text())
    assert index == original | {"_class_name": "WanVACEPipeline"}  # the same components, classes and options
    assert (out / "transformer" / "diffusion_pytorch_model.safetensors.index.json").exists()  # sharded at 20 KB

    theirs = WanVACEPipeline.from_pretrained(out).to(torch.float32)
    theirs.set_progress_bar_config(disable=True)
    assert isinstance(theirs.scheduler, UniPCMultistepScheduler) and theirs.scheduler.config.flow_shift == 16.0
    _same_state(state_numpy(theirs.transformer), state_numpy(pipe.transformer), "transformer")
    _same_state(state_numpy(theirs.vae), state_numpy(pipe.vae), "vae")
    sd = state_numpy(theirs.text_encoder)
    _same_state({k: v for k, v in sd.items() if k != "encoder.embed_tokens.weight"},
                {k: v for k, v in state_numpy(pipe.text_encoder).items() if k != "encoder.embed_tokens.weight"},
                "text encoder")
    assert theirs.tokenizer("a red cat").input_ids == pipe.tokenizer("a red cat").input_ids

    # the whole 4-step student run: diffusers with the exported scheduler against our pipeline, same noise
    ours = Pipeline.load(model_dir, text_encoder_offload="none")
    vcu = C.t2v(T, H, W)
    noise = np.random.default_rng(0).standard_normal(C.noise_shape(vcu, ours.vae)).astype(np.float32)
    mine = ours.generate("a red cat runs on the grass", vcu=vcu, latents=noise, progress=False).video
    with torch.no_grad():
        got = theirs(prompt="a red cat runs on the grass", height=H, width=W, num_frames=T, num_inference_steps=4,
                     guidance_scale=1.0, latents=torch.from_numpy(noise), output_type="np").frames
    mine01 = np.clip(C.frames_from_video(mine) * 0.5 + 0.5, 0, 1)
    np.testing.assert_allclose(np.asarray(got, np.float32), mine01, atol=1e-5)


def test_wan_layout_is_what_diffusers_converters_read(source, tmp_path):
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    pipe, _, model_dir = source
    out = tmp_path / "wan"
    assert vdot(["export", "--ckpt", str(model_dir), "--format", "wan", "--out", str(out),
                 "--text-encoder-dtype", "float32", "--quiet"]) == 0
    dit = {k: torch.tensor(np.asarray(v)) for k, v in open_tensors(out / "diffusion_pytorch_model.safetensors").items()}
    assert "vace_blocks.0.before_proj.weight" in dit and "head.modulation" in dit
    _same_state({k: v.numpy() for k, v in convert_wan_transformer_to_diffusers(dit).items()},
                state_numpy(pipe.transformer), "transformer")
    # (diffusers' convert_wan_vae_to_diffusers hard-codes the real VAE's block counts, so the tiny VAE is read
    # back with our own converter below, whose original-name table test_vae checks against diffusers')
    assert "decoder.upsamples.0.residual.0.gamma" in open_tensors(out / "Wan2.1_VAE.safetensors").keys()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "vace" and cfg["vace_layers"] == [0, 2] and cfg["vace_in_dim"] == 2 * Z + 64
    assert (out / "google" / "umt5-xxl" / "tokenizer.json").exists()
    # and our own converter reads the whole folder back (the Wan release's layout)
    assert vdot(["convert", "--src", str(out), "--dst", str(tmp_path / "again"), "--vae",
                 str(out / "Wan2.1_VAE.safetensors"), "--text-encoder", str(out / "models_t5_umt5-xxl-enc.safetensors"),
                 "--text-encoder-dtype", "float32"]) == 0
    from vdot_jax.weights.convert import load_transformer
    from vdot_jax.weights.text_encoder import load_umt5
    from vdot_jax.weights.wan_vae import load_vae

    for load in (load_transformer, load_umt5, load_vae):
        a, b = load(tmp_path / "again"), load(model_dir)
        for (p, x), y in zip(flat_state(a).items(), flat_state(b).values()):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(p))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A 2-step flow-matching run of configs/tiny.py (random tiny VACE model, toy data)."""
    wd = tmp_path_factory.mktemp("run") / "wd"
    assert vdot(["train", "--config", "configs/tiny.py:flow", "--workdir", str(wd), "--stop-after", "2",
                 "--config.train.checkpoint_every=1"]) == 0
    return wd


def test_workdir_to_jax_and_diffusers(workdir, tmp_path, capsys):
    from diffusers import WanVACETransformer3DModel

    from vdot_jax.train.loop import restore_model
    from vdot_jax.weights.convert import load_transformer

    trained = restore_model(workdir)
    assert vdot(["export", "--ckpt", str(workdir), "--format", "jax", "--out", str(tmp_path / "jax")]) == 0
    msg = capsys.readouterr().out
    assert "the model of" in msg and "at step 2" in msg and "add the VAE and text encoder" in msg
    # a flow run trains a many-step model: it samples as the teacher (vdot generate's and vdot ui's defaults)
    assert json.loads((tmp_path / "jax" / "vdot_model.json").read_text())["sampling"] == dict(
        kind="teacher", steps=50, shift=16.0, guide_scale=5.0)
    again = load_transformer(tmp_path / "jax")
    for (p, a), b in zip(flat_state(again).items(), flat_state(trained).values()):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(p))

    assert vdot(["export", "--ckpt", str(workdir), "--format", "diffusers", "--out", str(tmp_path / "hf"),
                 "--quiet"]) == 0
    assert "transformer folder only" not in capsys.readouterr().out  # --quiet
    theirs = WanVACETransformer3DModel.from_pretrained(tmp_path / "hf").eval()
    cfg = trained.cfg
    r = np.random.default_rng(0)
    x = r.normal(size=(1, cfg.in_channels, 2, 4, 4)).astype(np.float32)
    t, text = np.array([400.0], np.float32), r.normal(size=(1, 3, cfg.text_dim)).astype(np.float32)
    ctx = r.normal(size=(1, cfg.vace_in_channels, 2, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(run_diffusers(theirs, x, t, text, ctx), np.asarray(trained(x, t, text, ctx)),
                               atol=1e-5)
    # the workdir's model is placed as its export's is (uncommitted, on the default device), so both feed the same
    # compiled programs; leaves bound to the mesh the run saved with made every demo program compile again
    from vdot_jax import sources

    mine, exported = (flat_state(sources.load_transformer(p)) for p in (workdir, tmp_path / "hf"))
    for p, a in mine.items():
        assert (a.committed, a.sharding) == (exported[p].committed, exported[p].sharding), p


@pytest.mark.parametrize("extra, message", [
    (["--format", "jax", "--ema"], "kept no EMA"),
    (["--format", "jax", "--rank", "4"], "--rank and --teacher are for --format lora"),
    (["--format", "lora", "--rank", "0"], "--rank must be a positive integer or 'full'"),
    (["--format", "lora", "--rank", "4"], "needs --teacher"),
    (["--format", "diffusers", "--max-shard-size", "lots"], "--max-shard-size"),
])
def test_refusals(workdir, tmp_path, capsys, extra, message):
    assert vdot(["export", "--ckpt", str(workdir), "--out", str(tmp_path / "x"), *extra]) == 2
    assert message in capsys.readouterr().err


def test_refuses_a_non_empty_out_and_a_missing_source(source, tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    assert vdot(["export", "--ckpt", str(source[2]), "--format", "jax", "--out", str(tmp_path / "full")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert vdot(["export", "--ckpt", str(tmp_path / "nope"), "--format", "jax", "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert vdot(["export", "--ckpt", str(source[2]), "--format", "jax", "--ema", "--out", str(tmp_path / "o")]) == 2
    assert "for training workdirs" in capsys.readouterr().err


def test_lora_of_a_workdir_against_an_earlier_checkpoint(workdir, tmp_path, capsys):
    assert vdot(["export", "--ckpt", str(workdir), "--step", "1", "--format", "jax", "--out", str(tmp_path / "t"),
                 "--quiet"]) == 0
    assert vdot(["export", "--ckpt", str(workdir), "--format", "lora", "--teacher", str(tmp_path / "t"), "--rank",
                 "2", "--lora-layout", "wan", "--out", str(tmp_path / "lora")]) == 0
    out = capsys.readouterr().out
    assert "not carried by this layout" in out and "vace_blocks.*.attn1.to_q.weight" in out
    assert "dropped by diffusers' loader" in out and "output error on the probe input" in out
    assert "a wan-layout LoRA at rank 2 (lora_wan.safetensors" in out
    report = json.loads((tmp_path / "lora" / "lora_report.json").read_text())
    assert report["rank"] == 2 and report["summary"]["lora_layers"] > 0
    keys = open_tensors(tmp_path / "lora" / "lora_wan.safetensors").keys()
    assert all(k.startswith("diffusion_model.") for k in keys)


def test_exported_model_directory_records_how_the_run_samples(source, tmp_path):
    """--format jax records sampling defaults: a distilled generator as the student (at its consistent-schedule
    shift when it trained on one), a flow run's model as the teacher, a model directory as it recorded."""
    from vdot_jax.commands.export import sampling_record
    from vdot_jax.sources import Source

    def run(mode, **config):  # a resolved workdir, as sources.resolve returns it
        return Source(tmp_path, "workdir", 1, meta={"mode": mode, "config": config})

    student = dict(kind="student", steps=4, shift=16.0, guide_scale=1.0)
    assert sampling_record(run("vdot", schedule="release", student_shift=16.0)) == student
    assert sampling_record(run("vdot", schedule="consistent", student_shift=6.0)) == dict(student, shift=6.0)
    assert sampling_record(run("flow"))["kind"] == "teacher"
    assert sampling_record(Source(source[2], "model_dir")) == student  # converted with --sampling student
