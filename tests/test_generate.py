"""``vdot convert`` of a whole pipeline folder, ``vdot_jax.generate`` against diffusers' ``WanVACEPipeline`` (the
oracle), the ``vdot generate`` CLI for every task family, its refusals, and a sharded run on 8 fake devices.

One tiny random ``WanVACEPipeline`` folder is built per module (transformer, VAE with z_dim 4, umT5, a WordLevel
tokenizer, the flow UniPC scheduler) and converted once with the CLI; every test reads that model directory.
Videos are 9 frames of 32x48 (3 latent frames of 4x6, 18 tokens).
"""

from __future__ import annotations

import argparse
import json

import re

import jax
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
imageio = pytest.importorskip("imageio")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

from oracles import tiny_vace_pipeline  # noqa: E402
from vdot_jax import conditions as C  # noqa: E402
from vdot_jax.cli import main as vdot  # noqa: E402
from vdot_jax.data import video_io  # noqa: E402
from vdot_jax.models.config import WanConfig  # noqa: E402
from vdot_jax.sampling import pipeline as P  # noqa: E402
from vdot_jax.sampling.model_sampler import model_sampler  # noqa: E402

T, H, W = 9, 32, 48
Z = 4
SHIFT = 16.0
MEAN, STD = [0.1, -0.2, 0.3, 0.05], [0.5, 1.0, 1.5, 2.0]
# 2 heads of 16 (one per device under context=2), VACE hints at layers 0 and 2 of 3.
DIT = WanConfig(dim=32, ffn_dim=40, num_heads=2, num_layers=3, in_channels=Z, out_channels=Z, text_dim=32,
                freq_dim=32, rope_max_seq_len=64, vace_layers=(0, 2), vace_in_channels=2 * Z + 64)
WORDS = "a an the cat dog runs on grass in rain video of slowly red blue sky blurry static".split()
PROMPT, NEGATIVE = "a red cat runs on the grass", "blurry static video"
# Video values in [0, 1] after decoding; fp32 on both sides, differences are float rounding through the
# text encoder, four DiT evaluations, the UniPC updates and the VAE decoder.
TOL = 1e-5  # measured: 2.2e-6 (T2V, CFG 5) and 1.4e-6 (masked editing)


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    """(diffusers WanVACEPipeline, its saved folder, our converted model directory)."""
    return tiny_vace_pipeline(tmp_path_factory.mktemp("generate"), DIT, WORDS, latents_mean=MEAN, latents_std=STD,
                              shift=SHIFT)


@pytest.fixture(scope="module")
def ours(oracle):
    return P.Pipeline.load(oracle[2], text_encoder_offload="none")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Task input files in the release's conventions."""
    d = tmp_path_factory.mktemp("inputs")
    yy, xx = np.mgrid[0:H, 0:W]
    video = np.stack([np.stack([(xx * 5 + i * 9) % 256, (yy * 7 + i) % 256, np.full_like(xx, 60 + 10 * i)], -1)
                      for i in range(T)]).astype(np.uint8)
    mask = np.zeros((T, H, W), np.uint8)
    mask[:, 8:24, 16:40] = 255
    masked = video.copy()
    masked[mask > 0] = 127
    ref = np.zeros((20, 12, 3), np.uint8)
    ref[..., 0], ref[..., 1] = 200, np.arange(12, dtype=np.uint8)[None] * 20
    paths = {
        "video": video_io.write_video(d / "video.mp4", video, fps=16),
        "masked": video_io.write_video(d / "masked.mp4", masked, fps=16),
        "mask": video_io.write_video(d / "mask.mp4", mask, fps=16),
        "small_mask": video_io.write_video(d / "small_mask.mp4", mask[:, :, :32], fps=16),
        "ref": video_io.write_image(d / "ref.png", ref),
        "first": video_io.write_image(d / "first.png", video[0]),
    }
    return paths, video, mask


def _video01(ours_video):
    """Our [B, 3, F, H, W] in [-1, 1] -> diffusers' output_type="np" layout [B, F, H, W, 3] in [0, 1]."""
    return np.clip(C.frames_from_video(ours_video) * 0.5 + 0.5, 0.0, 1.0)


def _noise(vcu, seed):
    return np.random.default_rng(seed).standard_normal((1, Z, vcu.num_refs + 1 + (T - 1) // 4, H // 8, W // 8),
                                                       dtype=np.float32)


def _diffusers(pipe, noise, guide, steps=4, **kw):
    with torch.no_grad():
        out = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, height=H, width=W, num_frames=T,
                   num_inference_steps=steps, guidance_scale=guide, latents=torch.from_numpy(noise), output_type="np",
                   **kw)
    return np.asarray(out.frames, np.float32)


# ----------------------------------------------------------------------------- conversion


def test_convert_writes_one_model_directory(oracle):
    _, folder, model = oracle
    index = json.loads((model / "vdot_model.json").read_text())
    assert sorted(index["components"]) == ["text_encoder", "transformer", "vae"]
    meta = {c: json.loads((model / c / "config.json").read_text()) for c in index["components"]}
    assert meta["transformer"]["config"]["vace_layers"] == [0, 2] and meta["transformer"]["dtype"] == "float32"
    assert meta["vae"]["config"]["z_dim"] == Z and meta["vae"]["dtype"] == "float32"
    assert meta["text_encoder"]["dtype"] == "float32"
    assert (model / "text_encoder" / "tokenizer" / "tokenizer.json").exists()


def test_convert_components_separately_and_pipeline_folder_directly(oracle, ours, tmp_path, capsys):
    folder = oracle[1]
    dst = tmp_path / "m"
    assert vdot(["convert", "--src", str(folder / "transformer"), "--dst", str(dst)]) == 0
    out = capsys.readouterr().out
    assert "add vae, text_encoder for vdot generate" in out
    assert "sampling defaults for vdot generate and vdot ui: the teacher (50 steps, shift 16, CFG 5)" in out
    assert vdot(["convert", "--dst", str(dst), "--vae", str(folder / "vae"), "--text-encoder",
                 str(folder / "text_encoder"), "--tokenizer", str(folder / "tokenizer"),
                 "--text-encoder-dtype", "float32"]) == 0  # added to the existing directory
    assert "ready for vdot generate" in capsys.readouterr().out
    # adding components keeps what the transformer's conversion recorded
    assert json.loads((dst / "vdot_model.json").read_text())["sampling"]["kind"] == "teacher"
    vcu = C.t2v(5, H, W)
    ref = ours.generate(PROMPT, vcu=vcu, progress=False).video
    for model in (dst, folder):  # the converted directory (a teacher by default), the diffusers folder as is
        np.testing.assert_array_equal(P.generate(model, PROMPT, vcu=vcu, progress=False, **P.STUDENT).video, ref)
    for args, message in ((["--dst", str(dst)], "nothing to convert"),
                          (["--dst", str(dst), "--vae", str(folder / "vae"), "--tokenizer", str(folder)],
                           "--tokenizer goes with --text-encoder"),
                          (["--dst", str(dst), "--vae", str(folder / "vae"), "--sampling", "student"],
                           "--sampling goes with --src"),
                          (["--dst", str(tmp_path / "new"), "--sampling", "student"], "not a vdot-jax model directory"),
                          (["--dst", str(dst), "--vae", str(tmp_path / "nope.pth")],
                           "VAE path .*nope.pth does not exist")):
        assert vdot(["convert", *args]) == 2
        assert re.search(message, capsys.readouterr().err)


# ----------------------------------------------------------------------------- parity with diffusers


def test_t2v_with_cfg_matches_diffusers(oracle, ours):
    pipe = oracle[0]
    vcu = C.t2v(T, H, W)
    noise = _noise(vcu, 0)
    theirs = _diffusers(pipe, noise, guide=5.0)
    res = ours.generate(PROMPT, negative_prompt=NEGATIVE, vcu=vcu, latents=noise, steps=4, shift=SHIFT,
                        guide_scale=5.0, progress=False)
    assert theirs.shape == (1, T, H, W, 3) and res.video.shape == (1, 3, T, H, W)
    err = np.abs(_video01(res.video) - theirs).max()
    assert err < TOL, f"max abs difference {err}"
    assert theirs.std() > 0.05  # a real video, not a constant


def test_masked_editing_matches_diffusers(oracle, ours, files):
    pipe = oracle[0]
    _, video, mask = files
    frames = video.astype(np.float32)[None].transpose(0, 4, 1, 2, 3) / 127.5 - 1.0
    masks = (mask > 0).astype(np.float32)[None, None]
    vcu = C.VCU(frames, masks, task="mv2v", kind="repaint")  # as diffusers: the masked region is not greyed
    noise = _noise(vcu, 1)
    theirs = _diffusers(pipe, noise, guide=1.0, video=(frames.transpose(0, 2, 3, 4, 1) + 1.0) / 2.0,
                        mask=np.repeat(masks.transpose(0, 2, 3, 4, 1), 3, axis=-1))
    res = ours.generate(PROMPT, vcu=vcu, latents=noise, progress=False)  # student defaults: 4 steps, no CFG
    err = np.abs(_video01(res.video) - theirs).max()
    assert err < TOL, f"max abs difference {err}"
    # the conditions reach the model: the same noise without them gives another video
    t2v = ours.generate(PROMPT, vcu=C.t2v(T, H, W), latents=noise, progress=False)
    assert np.abs(t2v.video - res.video).max() > 1e-3


def test_reference_images_with_the_teachers_50_cfg_steps_match_diffusers(oracle, ours):
    """r2v end to end (the reference frame noised, denoised and dropped before decoding) on the teacher's path:
    50 UniPC steps at shift 16 with CFG 5, 100 network evaluations."""
    from PIL import Image

    pipe = oracle[0]
    # 24x16, letterboxed (bilinear, x4/3) onto the white 32x48 canvas. Sides are multiples of 8: diffusers first
    # resizes a reference to multiples of the VAE stride (its image processor's default), which the release does not.
    ref = (np.random.default_rng(5).random((24, 16, 3)) * 255).astype(np.uint8)
    vcu = C.r2v([ref.astype(np.float32).transpose(2, 0, 1) / 127.5 - 1.0], T, H, W)
    noise = _noise(vcu, 4)
    theirs = _diffusers(pipe, noise, guide=5.0, steps=50, reference_images=[Image.fromarray(ref)])
    res = ours.generate(PROMPT, negative_prompt=NEGATIVE, vcu=vcu, latents=noise, steps=50, shift=SHIFT,
                        guide_scale=5.0, progress=False)
    assert theirs.shape == (1, T, H, W, 3) and res.latents.shape[2] == 1 + (T - 1) // 4 + 1
    err = np.abs(_video01(res.video) - theirs).max()
    assert err < TOL, f"max abs difference {err}"
    # the reference reaches the model: the same noise without it (its frame dropped) gives another video
    plain = ours.generate(PROMPT, negative_prompt=NEGATIVE, vcu=C.t2v(T, H, W), latents=noise[:, :, 1:], steps=50,
                          shift=SHIFT, guide_scale=5.0, progress=False)
    assert np.abs(plain.video - res.video).max() > 1e-3


def test_seed_latents_and_reference_frames(ours):
    vcu = C.r2v([np.linspace(-1, 1, 3 * 16 * 24, dtype=np.float32).reshape(3, 16, 24)], T, H, W)
    a = ours.generate(PROMPT, vcu=vcu, seed=3, progress=False)
    noise = np.asarray(jax.random.normal(jax.random.key(3), C.noise_shape(vcu, ours.vae)))
    b = ours.generate(PROMPT, vcu=vcu, latents=noise, progress=False)
    assert a.video.shape == (1, 3, T, H, W) and a.latents.shape == (1, Z, 1 + 3, H // 8, W // 8)
    np.testing.assert_array_equal(a.video, b.video)
    for k in ("text", "conditions", "denoise", "compile", "decode", "total"):
        assert a.timings[k] >= 0
    assert b.timings["compile"] == 0.0  # the same setting and shapes: the cached program, not a new compile
    with pytest.raises(P.GenerateError, match=r"latents of shape \(1, 4, 3, 4, 6\) .* expected \(1, 4, 4, 4, 6\)"):
        ours.generate(PROMPT, vcu=vcu, latents=np.zeros((1, Z, 3, 4, 6), np.float32), progress=False)


# ----------------------------------------------------------------------------- the CLI


def _read_mp4(path):
    frames = imageio.v3.imread(path, plugin="FFMPEG")
    return frames.shape


CLI_TASKS = {
    "t2v": lambda f: [],
    "r2v": lambda f: ["--ref-images", str(f["ref"])],
    "depth": lambda f: ["--task", "depth", "--src-video", str(f["video"])],
    "mv2v": lambda f: ["--src-video", str(f["masked"]), "--src-mask", str(f["mask"])],
    # inpaint: test_cli_video_is_pipeline_generate_for_the_same_seed
    "outpaint": lambda f: ["--task", "outpaint", "--src-video", str(f["video"]), "--expand", "0,0,0.25,0.25"],
    "first_frame": lambda f: ["--task", "first_frame", "--src-video", str(f["first"])],
    "last_clip": lambda f: ["--task", "last_clip", "--clip-frames", "3", "--src-video", str(f["video"])],
}


@pytest.mark.parametrize("task", sorted(CLI_TASKS))
def test_cli_writes_a_playable_mp4(oracle, files, tmp_path, capsys, task):
    out = tmp_path / f"{task}.mp4"
    args = ["generate", "--model", str(oracle[2]), "--prompt", PROMPT, "--frames", str(T), "--height", str(H),
            "--width", str(W), "--out", str(out), "--quiet", *CLI_TASKS[task](files[0])]
    assert vdot(args) == 0
    summary = capsys.readouterr().out.strip().splitlines()
    assert len(summary) == 1 and summary[0].startswith(f"generated {task}") and str(out) in summary[0]
    for stage in ("text", "conditions", "denoise", "decode"):
        assert f"{stage} " in summary[0]
    assert _read_mp4(out) == (T, H, W, 3)


def test_task_inputs_grey_the_inpainted_region_expand_in_order_and_keep_clip_frames(files):
    paths = files[0]
    size = dict(frames=T, height=H, width=W)
    plain = P.task_inputs(None, src_video=paths["video"], **size)  # the video as a control: frames as read
    edit = P.task_inputs(None, src_video=paths["video"], src_mask=paths["mask"], **size)
    inpaint = P.task_inputs("inpaint", src_video=paths["video"], src_mask=paths["mask"], **size)
    m = inpaint.masks
    np.testing.assert_array_equal(m, edit.masks)
    assert set(np.unique(m)) == {0.0, 1.0} and m[0, 0, :, 8:24, 16:40].all() and m.sum() == T * 16 * 24
    np.testing.assert_array_equal(inpaint.frames, plain.frames * (1.0 - m))  # grey (0) where generated, kept elsewhere
    assert np.abs(plain.frames[..., 8:24, 16:40]).mean() > 0.1 and (inpaint.kind, edit.kind) == ("repaint", "repaint")

    # --expand top,bottom,left,right: the canvas is HxW, the video shrunk to H/(1+top+bottom) x W/(1+left+right)
    for expand, rows, cols in (("0.5,0,0,0", slice(11, 32), slice(0, 48)), ("0,0.5,0,0", slice(0, 21), slice(0, 48)),
                               ("0,0,0.5,0", slice(0, 32), slice(16, 48)), ("0,0,0,0.5", slice(0, 32), slice(0, 32))):
        out = P.task_inputs("outpaint", src_video=paths["video"], expand=expand, **size)
        border = np.ones((H, W), bool)  # generated: mask 1, grey 0
        border[rows, cols] = False
        np.testing.assert_array_equal(out.masks[0, 0, 0], border.astype(np.float32), err_msg=expand)
        assert not out.frames[0, :, 0][:, border].any() and np.abs(out.frames[0, :, 0][:, ~border]).mean() > 0.1

    # --clip-frames: the first / last k frames of the source kept (mask 0), the rest generated
    for task, k in (("last_clip", 3), ("first_clip", 2)):
        out = P.task_inputs(task, src_video=paths["video"], clip_frames=k, **size)
        keep = slice(T - k, T) if task == "last_clip" else slice(0, k)
        expected = np.ones(T, np.float32)
        expected[keep] = 0.0
        np.testing.assert_array_equal(out.masks[0, 0, :, 0, 0], expected)
        np.testing.assert_array_equal(out.frames[:, :, keep], plain.frames[:, :, keep])
        assert not np.delete(out.frames, np.arange(T)[keep], axis=2).any()


def test_cli_video_is_pipeline_generate_for_the_same_seed(oracle, ours, files, tmp_path, capsys):
    paths = files[0]
    cli = tmp_path / "cli.mp4"
    assert vdot(["generate", "--model", str(oracle[2]), "--prompt", PROMPT, "--frames", str(T), "--height", str(H),
                 "--width", str(W), "--seed", "5", "--out", str(cli), "--quiet", "--task", "inpaint", "--src-video",
                 str(paths["video"]), "--src-mask", str(paths["mask"])]) == 0
    summary = capsys.readouterr().out.strip().splitlines()
    assert len(summary) == 1 and summary[0].startswith("generated inpaint") and str(cli) in summary[0]
    vcu = P.task_inputs("inpaint", src_video=paths["video"], src_mask=paths["mask"], frames=T, height=H, width=W)
    api = ours.generate(PROMPT, vcu=vcu, seed=5, out=tmp_path / "api.mp4", progress=False)
    read = lambda p: imageio.v3.imread(p, plugin="FFMPEG")  # noqa: E731
    np.testing.assert_array_equal(read(cli), read(tmp_path / "api.mp4"))  # the same frames, encoded alike
    # and they are this result's frames (mp4 is lossy: nearer to them than to another seed's by far)
    other = ours.generate(PROMPT, vcu=vcu, seed=6, progress=False)
    err = {s: np.abs(read(cli).astype(np.float32) - r.frames()).mean() for s, r in ((5, api), (6, other))}
    assert err[5] < 0.5 * err[6], err


@pytest.fixture(scope="module")
def teacher(oracle, tmp_path_factory):
    """The oracle's model directory recorded as a teacher (vdot convert --sampling alone re-records it)."""
    import shutil

    teacher = shutil.copytree(oracle[2], tmp_path_factory.mktemp("teacher") / "model")
    assert vdot(["convert", "--dst", str(teacher), "--sampling", "teacher"]) == 0
    return teacher


def test_sampling_defaults_come_from_the_model_directory_and_flags_win(oracle, teacher, capsys):
    """A student directory samples 4 steps without CFG, a teacher directory 50 steps with CFG 5 (what convert
    records); a flag given replaces its one setting (the CLI run is test_cli_teacher_settings_and_progress).
    Catches generate ignoring the record, or the record overriding a flag."""
    from vdot_jax.commands import generate

    assert json.loads((teacher / "vdot_model.json").read_text())["sampling"] == dict(
        kind="teacher", steps=50, shift=16.0, guide_scale=5.0)

    def settings(model, **flags):  # what run() passes to the pipeline
        args = argparse.Namespace(model=str(model), **{k: flags.get(k) for k in ("steps", "guide_scale", "shift")})
        generate.sampling(args, lambda msg: None)
        return args.steps, args.guide_scale, args.shift

    assert settings(oracle[2]) == (4, 1.0, 16.0)
    assert settings(teacher) == (50, 5.0, 16.0)
    assert settings(teacher, steps=3, guide_scale=1.0) == (3, 1.0, 16.0)
    assert settings(oracle[2], shift=5.0) == (4, 1.0, 5.0)
    assert P.sampling_defaults(teacher) == dict(steps=50, shift=16.0, guide_scale=5.0)  # Pipeline.load's too
    # what convert records without --sampling: the VDOT release's torch state dict is the student
    from vdot_jax.commands.convert import sampling_kind

    def kind(src, **flags):
        return sampling_kind(argparse.Namespace(**{"sampling": None, "key": None, **flags}), src)

    assert kind(oracle[1]) == kind(oracle[1] / "transformer") == "teacher"  # diffusers (Wan-VACE) folders
    assert kind(oracle[1].parent / "vdot_14b.pt") == "student" and kind(oracle[1], key="generator_ema") == "student"
    assert kind(oracle[1].parent / "vdot_14b.pt", sampling="teacher") == "teacher"


def test_cli_teacher_settings_and_progress(teacher, tmp_path, capsys):
    """A teacher directory: CFG 5 from its record, 6 steps from the flag (which wins over its 50)."""
    out = tmp_path / "teacher.mp4"
    assert vdot(["generate", "--model", str(teacher), "--prompt", PROMPT, "--negative-prompt", NEGATIVE,
                 "--frames", "5", "--height", str(H), "--width", str(W), "--steps", "6",
                 "--solver", "euler", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "(6 euler steps, shift 16, CFG 5)" in captured.out
    assert "sampling: 6 steps, guide scale 5, shift 16 (--steps given, the rest the model's defaults)" in captured.err
    assert "[vdot generate] task t2v" in captured.err and "loaded the model" in captured.err
    assert "denoising step 6/6 done" in captured.err  # per-step progress from inside the compiled loop
    assert _read_mp4(out) == (5, H, W, 3)


@pytest.mark.parametrize("extra, message", [
    (lambda f, m: ["--model", str(m), "--src-video", str(f["video"]), "--src-mask", str(f["small_mask"])],
     "small_mask.mp4 is 32x32 but video .*video.mp4 is 32x48; they must be the same size"),
    (lambda f, m: ["--model", str(m), "--frames", "8"], "must be 1 \\+ 4k \\(e.g. 5 or 9\\) .* got 8"),
    (lambda f, m: ["--model", str(m.parent / "no_such_model")], "model directory .*no_such_model does not exist"),
    (lambda f, m: ["--model", str(m / "vae")], "is not a converted vdot-jax model directory"),
    (lambda f, m: ["--model", str(m), "--height", "40"], "multiples of 16x16 .* got 40x48"),
    (lambda f, m: ["--model", str(m), "--task", "outpaint", "--src-video", str(f["video"])],
     "task outpaint needs expand"),
    (lambda f, m: ["--model", str(m), "--src-mask", str(f["mask"])], "was given without a src_video"),
    (lambda f, m: ["--transformer", str(m)], "give --model DIR"),
])
def test_cli_refuses_inconsistent_inputs(oracle, files, tmp_path, capsys, extra, message):
    args = ["generate", "--prompt", PROMPT, "--frames", str(T), "--height", "32", "--width", str(W),
            "--out", str(tmp_path / "x.mp4"), "--quiet"]
    code = vdot(args + extra(files[0], oracle[2]))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("vdot generate: error: "), err
    assert re.search(message, err), err
    assert not (tmp_path / "x.mp4").exists()


# ----------------------------------------------------------------------------- sharded


def test_mesh_output_equals_single_device(oracle, ours):
    assert jax.device_count() == 8
    sharded = P.Pipeline.load(oracle[2], mesh="data=2,fsdp=2,context=2", text_encoder_offload="host")
    assert sharded.transformer.runtime.attention == "ulysses:xla"
    vcu = C.t2v(T, H, W)
    noise = _noise(vcu, 2)
    kw = dict(negative_prompt=NEGATIVE, vcu=vcu, latents=noise, guide_scale=5.0, progress=False)
    single = ours.generate(PROMPT, **kw)
    multi = sharded.generate(PROMPT, **kw)
    # fp32 summation order differs with the placement (1.05e-5 seen on a latent of 2.3); a wrong split is O(1)
    np.testing.assert_allclose(multi.latents, single.latents, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(multi.video, single.video, atol=1e-5, rtol=1e-5)
    kernel = sharded.transformer.blocks.attn1.to_q.kernel[...]
    assert len(kernel.sharding.device_set) == 8 and "fsdp" in str(kernel.sharding.spec)
    program = model_sampler(nnx.graphdef(sharded.transformer), steps=P.STUDENT["steps"], shift=P.STUDENT["shift"],
                            guidance=5.0, solver="unipc", context_scale=1.0, on_step=None)  # the cached one
    compiled = [c for (mesh, *_), c in program.compiled.items() if mesh is sharded.mesh]
    assert compiled and all("all-to-all" in c.as_text() for c in compiled)  # Ulysses really ran


def test_text_encoder_freed_and_reloaded_zero_latents_cached(oracle):
    pipe = P.Pipeline.load(oracle[2], text_encoder_offload="free")
    vcu = C.t2v(5, H, W)
    a = pipe.generate(PROMPT, vcu=vcu, progress=False)
    assert pipe._text_encoder is None  # freed after encoding
    misses = C.ZERO_LATENTS.misses
    b = pipe.generate(PROMPT, vcu=vcu, progress=False)  # reloads the encoder; the all-zero context is not re-encoded
    assert C.ZERO_LATENTS.misses == misses and pipe._text_encoder is None
    np.testing.assert_array_equal(a.video, b.video)


# ----------------------------------------------------------------------------- many videos (--batch)


def _rows(files, tmp_path):
    """16 rows in two shapes: 10 of 9 frames (text-to-video and inpainting), 6 of 5 frames; seeds vary."""
    prompts = [PROMPT, "a blue dog in the rain", "the sky", "a cat on grass"]
    rows = [dict(prompt=prompts[i % 4], seed=10 + i, **({"task": "inpaint", "src_video": "video.mp4",
                                                          "src_mask": "mask.mp4"} if i % 3 == 0 else {}))
            for i in range(10)]
    rows += [dict(prompt=prompts[i % 4], seed=30 + i, frames=5, out=f"short_{i}.mp4") for i in range(6)]
    inputs = files[0]["video"].parent  # paths in rows are read from the rows file's folder
    path = inputs / f"rows_{tmp_path.name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


def _single(ours, files, row):
    """The row alone, as `vdot generate` samples it (uint8 frames)."""
    frames = row.get("frames", T)
    src = dict(task="inpaint", src_video=files[0]["video"], src_mask=files[0]["mask"]) if "task" in row else {}
    vcu = P.task_inputs(frames=frames, height=H, width=W, **src)
    return ours.generate(row["prompt"], vcu=vcu, seed=row["seed"], progress=False).frames()


def test_batch_file_over_a_mesh_equals_single_runs_and_resumes(oracle, ours, files, tmp_path, capsys):
    from vdot_jax.sampling import batch as B

    path, rows = _rows(files, tmp_path)
    defaults = dict(frames=T, height=H, width=W, steps=4, guide_scale=1.0, shift=SHIFT, solver="unipc",
                    context_scale=1.0)
    parsed, bad = B.read_rows(path, defaults)
    calls = B.plan_calls(parsed, 4)
    assert not bad and len(parsed) == 16 and [len(c) for c in calls] == [4, 4, 2, 4, 2]
    single = {r.name: _single(ours, files, row) for r, row in zip(parsed, rows)}

    # In batches of 4 -- on one device, and over data=2 x fsdp=2 (x context=2) with one video per device -- every
    # row's frames are its single run's up to one level where fp32 sums in another order (batched matmuls, the
    # mesh; 1e-5 on the latents as in the test above) round across it. Another row's seed or prompt is tens of
    # levels off everywhere. One program per shape.
    sharded = P.Pipeline.load(oracle[2], mesh="data=2,fsdp=2,context=2", text_encoder_offload="none")
    batched = {}
    for pipe, some in ((sharded, (calls[0], calls[3])), (ours, calls)):  # the mesh: one call of each shape
        for call in some:
            ok, failed, result = B.sample_call(pipe, call, 4)
            assert ok == call and not failed and result.video.shape[0] == 4
            for i, row in enumerate(call):
                batched[row.name] = result.frames(i)
                diff = np.abs(batched[row.name].astype(np.int16) - single[row.name])
                assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (row.name, diff.max(), (diff > 0).mean())
    program = model_sampler(nnx.graphdef(sharded.transformer), steps=4, shift=SHIFT, guidance=1.0, solver="unipc",
                            context_scale=1.0, on_step=None)
    assert len([m for m, *_ in program.compiled if m is sharded.mesh]) == 2
    # The VAE decode is split by batch over the mesh as well (a batch of 4 on data x fsdp = 4), values as on one device.
    video = sharded.decode(result.latents)
    assert len({d for d in video.sharding.device_set}) == 8 and not video.sharding.is_fully_replicated
    np.testing.assert_allclose(np.asarray(video), np.asarray(ours.decode(result.latents)), atol=1e-5)

    # The command, on one device in padded batches of 4: each row's frames of the same batch, encoded alike (the
    # right video under each row's name), a manifest, and a re-run after deleting two videos samples exactly those.
    out = tmp_path / "videos"
    cli = ["generate", "--model", str(oracle[2]), "--batch", str(path), "--out", str(out), "--frames", str(T),
           "--height", str(H), "--width", str(W), "--batch-size", "4", "--quiet"]
    assert vdot(cli) == 0
    assert capsys.readouterr().out.startswith("16 written, 0 already done, 0 failed in 5 program call(s)")
    read = lambda p: imageio.v3.imread(p, plugin="FFMPEG")  # noqa: E731
    for name, frames in batched.items():
        video_io.write_video(tmp_path / f"alone_{name}", frames, fps=16)
        np.testing.assert_array_equal(read(out / name), read(tmp_path / f"alone_{name}"), err_msg=name)
    records = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["line"] for r in records] == list(range(1, 17)) and records[3]["seed"] == 13
    (out / "00002.mp4").unlink()
    (out / "short_4.mp4").unlink()
    before = {p: p.stat().st_mtime_ns for p in out.glob("*.mp4")}
    assert vdot(cli) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("2 written, 14 already done, 0 failed in 2 program call(s)"), line
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # the others untouched
    for name in ("00002.mp4", "short_4.mp4"):
        np.testing.assert_array_equal(read(out / name), read(tmp_path / f"alone_{name}"), err_msg=name)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".vdot-generate"]


def test_batch_bad_rows_are_skipped_and_reported(oracle, files, tmp_path, capsys):
    inputs = files[0]["video"].parent
    path = inputs / "bad_rows.jsonl"
    path.write_text("\n".join([
        json.dumps(dict(prompt=PROMPT, frames=5)),
        "{not json",
        json.dumps(dict(prompt=PROMPT, frames=5, src_video="missing.mp4", out="missing.mp4")),
        json.dumps(dict(prompt=PROMPT, steps=0)),
        json.dumps(dict(prompt=PROMPT, frames=5, color="red")),
    ]) + "\n")
    out = tmp_path / "out"
    code = vdot(["generate", "--model", str(oracle[2]), "--batch", str(path), "--out", str(out), "--height", str(H),
                 "--width", str(W), "--quiet"])
    line = capsys.readouterr().out.strip()
    assert code == 1 and line.startswith("1 written, 0 already done, 4 failed"), line
    errors = {e["line"]: e["error"] for e in map(json.loads, (out / "errors.jsonl").read_text().splitlines())}
    assert sorted(errors) == [2, 3, 4, 5] and "not JSON" in errors[2] and "missing.mp4" in errors[3]
    assert "steps must be > 0" in errors[4] and "unknown field(s) color" in errors[5]
    assert sorted(p.name for p in out.glob("*.mp4")) == ["00001.mp4"]

    # a folder the command did not make, an output onto an input, two rows writing one file: refused, nothing written
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    dup = inputs / "dup_rows.jsonl"
    dup.write_text(json.dumps(dict(prompt=PROMPT, out="a.mp4")) + "\n" + json.dumps(dict(prompt="x", out="a.mp4")))
    onto = inputs / "onto_rows.jsonl"
    onto.write_text(json.dumps(dict(prompt=PROMPT, src_video="video.mp4", out="video.mp4")))
    for rows_file, target, message, extra in ((path, mine, "was not made by vdot generate", []),
                                              (dup, tmp_path / "d", "lines 1 and 2 both", []),
                                              (onto, inputs, "which line 1 writes", ["--overwrite"])):
        code = vdot(["generate", "--model", str(oracle[2]), "--batch", str(rows_file), "--out", str(target), *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"] and not (tmp_path / "d").exists()


def test_batch_two_processes_write_each_row_once(oracle, tmp_path):
    import os
    import sys
    from pathlib import Path

    from conftest import FAST_COMPILE, free_port, run_together

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(dict(prompt=PROMPT, seed=i, frames=5)) + "\n" for i in range(6)))
    port = free_port()
    out = tmp_path / "videos"
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count=2 {FAST_COMPILE}",
               VDOT_COORDINATOR=f"127.0.0.1:{port}", VDOT_NUM_PROCESSES="2")
    cmd = [sys.executable, "-m", "vdot_jax.cli", "generate", "--model", str(oracle[2]), "--batch", str(rows),
           "--out", str(out), "--height", str(H), "--width", str(W), "--mesh", "data=2"]
    done = run_together([cmd] * 2, [dict(env, VDOT_PROCESS_ID=str(i)) for i in range(2)], timeout=600,
                        cwd=Path(__file__).parents[1])
    for rc, _, e in done:
        assert rc == 0, e[-3000:]
    outs = [(o, e) for _, o, e in done]
    # each host sampled its three rows (lines 1, 3, 5 and 2, 4, 6) in one call of two on its own two devices
    outs = [(o.strip().splitlines()[-1], e) for o, e in outs]  # (gloo prints its connections to stdout first)
    for i, (o, e) in enumerate(outs):
        assert o.startswith("3 written, 0 already done, 0 failed in 2 program call(s)"), o
        written = re.findall(r"wrote ([\d., mp4]+) \(", e)
        assert sorted(n for w in written for n in w.split(", ")) == [f"{line:05d}.mp4" for line in (1 + i, 3 + i, 5 + i)]
    assert "manifest.jsonl lists 6 of 6 row(s)" in outs[0][0]
    assert sorted(p.name for p in out.glob("*.mp4")) == [f"{line:05d}.mp4" for line in range(1, 7)]
    assert sorted(p.name for p in out.glob("errors*.jsonl")) == ["errors.0-of-2.jsonl", "errors.1-of-2.jsonl"]


def test_prepared_rows_feed_the_batch(oracle, files, tmp_path, capsys):
    """Your own video in two commands: `vdot prepare ... --rows` then `vdot generate --batch`; each row's video is
    the single `vdot generate` run of the files and task its row names."""
    rows = tmp_path / "jobs.jsonl"
    size = ["--frames", str(T), "--height", str(H), "--width", str(W)]
    for task, extra in (("inpaint", ["--box", "8,8,24,20"]), ("first_frame", [])):
        assert vdot(["prepare", task, "--src-video", str(files[0]["video"]), "--out", str(tmp_path / task),
                     "--prompt", PROMPT, "--rows", str(rows), *size, *extra]) == 0
    capsys.readouterr()
    out = tmp_path / "videos"
    assert vdot(["generate", "--model", str(oracle[2]), "--batch", str(rows), "--out", str(out), "--quiet"]) == 0
    assert capsys.readouterr().out.startswith("2 written, 0 already done, 0 failed")
    read = lambda p: imageio.v3.imread(p, plugin="FFMPEG")  # noqa: E731
    for line, row in enumerate(map(json.loads, rows.read_text().splitlines()), 1):
        single = tmp_path / f"single_{line}.mp4"
        files_args = ["--src-video", str(rows.parent / row["src_video"])]
        if row.get("src_mask"):
            files_args += ["--src-mask", str(rows.parent / row["src_mask"])]
        assert vdot(["generate", "--model", str(oracle[2]), "--prompt", PROMPT, "--task", row["task"], *size,
                     *files_args, "--out", str(single), "--quiet"]) == 0
        np.testing.assert_array_equal(read(out / f"{line:05d}.mp4"), read(single))
