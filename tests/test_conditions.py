"""VCU builders, file conventions and the VACE context against diffusers' WanVACEPipeline (the oracle).

The pipeline's own ``preprocess_conditions``/``prepare_video_latents``/``prepare_masks`` run on a tiny random
``AutoencoderKLWan`` (z_dim 4, so nothing is hard-wired to Wan's 16), and our ``vace_context`` runs on the same
VAE through ``TorchVAE`` below, so any difference is in the packing, not in a VAE.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
PIL_Image = pytest.importorskip("PIL.Image")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

from vdot_jax import conditions as C  # noqa: E402
from vdot_jax.data import video_io  # noqa: E402


T, H, W = 5, 32, 48  # 5 frames -> 2 latent frames; 32x48 -> 4x6 latent pixels (16-divisible)
Z = 4
MEAN = [0.1, -0.2, 0.3, 0.05]
STD = [0.5, 1.0, 1.5, 2.0]


class TorchVAE:
    """diffusers' AutoencoderKLWan behind the interface ``vace_context`` expects (torch in, numpy out)."""

    def __init__(self, model):
        self.model = model
        self.z_dim = model.config.z_dim
        self.stride = (2 ** sum(model.config.temperal_downsample), 2 ** len(model.config.temperal_downsample),
                       2 ** len(model.config.temperal_downsample))
        self.encode_calls = 0
        self.encoded_samples = 0
        self._mean = np.asarray(model.config.latents_mean, np.float32).reshape(1, -1, 1, 1, 1)
        self._inv_std = (1.0 / np.asarray(model.config.latents_std, np.float32)).reshape(1, -1, 1, 1, 1)

    def encode(self, video):
        self.encode_calls += 1
        self.encoded_samples += int(np.shape(video)[0])
        with torch.no_grad():
            out = self.model.encode(torch.from_numpy(np.ascontiguousarray(video, np.float32)))
        return out.latent_dist.mode().numpy()

    def normalize(self, z):
        return (np.asarray(z, np.float32) - self._mean) * self._inv_std

    def denormalize(self, z):
        return np.asarray(z, np.float32) / self._inv_std + self._mean

    def decode(self, z):
        with torch.no_grad():
            return self.model.decode(torch.from_numpy(np.asarray(z, np.float32))).sample.numpy()


@pytest.fixture(scope="module")
def torch_vae():
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    return AutoencoderKLWan(base_dim=8, z_dim=Z, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                            temperal_downsample=[False, True, True], latents_mean=MEAN, latents_std=STD).eval()


@pytest.fixture(scope="module")
def vae(torch_vae):
    return TorchVAE(torch_vae)


@pytest.fixture(scope="module")
def pipe(torch_vae):
    from diffusers import WanVACEPipeline, WanVACETransformer3DModel

    # the transformer is only read for its patch size; a one-layer toy keeps the real component in place
    tr = WanVACETransformer3DModel(num_attention_heads=1, attention_head_dim=8, in_channels=Z, out_channels=Z,
                                   text_dim=8, freq_dim=8, ffn_dim=8, num_layers=1, vace_layers=[0],
                                   vace_in_channels=2 * Z + 64, rope_max_seq_len=32)
    return WanVACEPipeline(tokenizer=None, text_encoder=None, vae=torch_vae, scheduler=None, transformer=tr)


def diffusers_context(pipe, video=None, mask=None, ref_images=None, num_frames=T, height=H, width=W):
    """What WanVACEPipeline.__call__ builds: preprocess_conditions -> prepare_video_latents + prepare_masks."""
    cpu = torch.device("cpu")
    v, m, refs = pipe.preprocess_conditions(video, mask, ref_images, 1, height, width, num_frames, torch.float32, cpu)
    with torch.no_grad():
        latents = pipe.prepare_video_latents(v, m, refs, device=cpu)
        masks = pipe.prepare_masks(m, refs)
    return torch.cat([latents, masks], dim=1).numpy()


def as_pipeline_video(frames):
    """[1, 3, T, H, W] in [-1, 1] -> [1, T, H, W, 3] in [0, 1] (a numpy video the pipeline normalises back)."""
    return ((np.asarray(frames, np.float32) + 1.0) / 2.0).transpose(0, 2, 3, 4, 1)


def as_pipeline_mask(masks):
    return np.repeat(np.asarray(masks, np.float32).transpose(0, 2, 3, 4, 1), 3, axis=-1)


def rng_video(seed, t=T, h=H, w=W):
    """Smooth-ish random video in [-1, 1] (uint8-representable)."""
    r = np.random.default_rng(seed)
    u8 = (r.random((1, 3, t, h // 4, w // 4)) * 255).astype(np.uint8).repeat(4, axis=3).repeat(4, axis=4)
    return u8.astype(np.float32) / 127.5 - 1.0


def rng_image_u8(seed, h, w):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def u8_to_chw(img):
    return img.astype(np.float32).transpose(2, 0, 1) / 127.5 - 1.0


def rect_mask(t=T, h=H, w=W, box=(8, 24, 16, 40)):
    m = np.zeros((1, 1, t, h, w), np.float32)
    m[..., box[0]:box[1], box[2]:box[3]] = 1.0
    return m


def check(ours, theirs, atol=1e-5):
    ours = np.asarray(ours)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    err = np.abs(ours - theirs).max()
    assert err <= atol, f"max abs difference {err}"


# ----------------------------------------------------------------------------- parity with diffusers


def test_t2v_context_matches_pipeline(pipe, vae):
    ctx = C.vace_context(C.t2v(T, H, W), vae, zero_cache=None)
    assert ctx.shape == (1, 2 * Z + 64, 2, H // 8, W // 8)
    check(ctx, diffusers_context(pipe))


def test_r2v_context_matches_pipeline_with_letterboxing(pipe, vae):
    ref = rng_image_u8(1, 24, 16)  # taller than the 32x48 canvas: letterboxed to 32x21, centred on white
    vcu = C.r2v([u8_to_chw(ref)], T, H, W)
    assert vcu.refs.shape == (1, 1, 3, H, W)
    assert np.all(vcu.refs[0, 0, :, :, :10] == 1.0) and np.all(vcu.refs[0, 0, :, :, -10:] == 1.0)  # white bars
    ctx = C.vace_context(vcu, vae, zero_cache=None)
    assert ctx.shape == (1, 2 * Z + 64, 1 + 2, H // 8, W // 8)
    check(ctx, diffusers_context(pipe, ref_images=[PIL_Image.fromarray(ref)]))
    assert np.all(np.asarray(ctx)[:, Z:, 0] == 0)  # reference frame: z zero channels and a zero mask


def test_two_references_order(pipe, vae):
    refs = [rng_image_u8(2, 16, 16), rng_image_u8(3, 32, 24)]
    vcu = C.r2v([u8_to_chw(r) for r in refs], T, H, W)
    theirs = diffusers_context(pipe, ref_images=[PIL_Image.fromarray(r) for r in refs])
    check(C.vace_context(vcu, vae, reference_order="diffusers", zero_cache=None), theirs)
    ours = np.asarray(C.vace_context(vcu, vae, zero_cache=None))  # release order: [r1, r2, video]
    check(ours[:, :, [1, 0, 2, 3]], theirs)


def test_depth_control_context_matches_pipeline(pipe, vae):
    control = rng_video(4)
    vcu = C.v2v(control, "depth")
    check(C.vace_context(vcu, vae, zero_cache=None), diffusers_context(pipe, video=as_pipeline_video(control)))


def test_inpaint_context_matches_pipeline(pipe, vae):
    video = rng_video(5)
    vcu = C.inpaint(video, rect_mask(), grey_masked=False)
    theirs = diffusers_context(pipe, video=as_pipeline_video(video), mask=as_pipeline_mask(vcu.masks))
    check(C.vace_context(vcu, vae, zero_cache=None), theirs)
    greyed = C.inpaint(video, rect_mask())  # the release's annotator greys what is to be regenerated
    np.testing.assert_array_equal(greyed.frames, video * (1 - rect_mask()))


def test_outpaint_context_matches_pipeline(pipe, vae):
    inner = rng_video(6, h=32, w=32)
    vcu = C.outpaint(inner, left=0.25, right=0.25)
    assert vcu.frames.shape == (1, 3, T, 32, 48)
    np.testing.assert_array_equal(vcu.masks[0, 0, :, :, 8:40], 0)
    assert np.all(vcu.masks[0, 0, :, :, :8] == 1) and np.all(vcu.masks[0, 0, :, :, 40:] == 1)
    assert np.all(vcu.frames[..., :8] == 0)
    theirs = diffusers_context(pipe, video=as_pipeline_video(vcu.frames), mask=as_pipeline_mask(vcu.masks))
    check(C.vace_context(vcu, vae, zero_cache=None), theirs)


def test_first_frame_extension_context_matches_pipeline(pipe, vae):
    video = rng_video(7)
    vcu = C.extension_from_video(video, "first_frame")
    np.testing.assert_array_equal(vcu.frames[:, :, 0], video[:, :, 0])
    assert np.all(vcu.frames[:, :, 1:] == 0) and np.all(vcu.masks[:, :, 1:] == 1) and np.all(vcu.masks[:, :, 0] == 0)
    theirs = diffusers_context(pipe, video=as_pipeline_video(vcu.frames), mask=as_pipeline_mask(vcu.masks))
    check(C.vace_context(vcu, vae), theirs)


def test_composite_reference_plus_inpaint_matches_pipeline(pipe, vae):
    video, ref = rng_video(8), rng_image_u8(9, 16, 32)
    vcu = C.compose(C.r2v([u8_to_chw(ref)], T, H, W), C.inpaint(video, rect_mask()))
    assert vcu.task == "r2v+inpaint" and vcu.num_refs == 1 and vcu.kind == "repaint"
    theirs = diffusers_context(pipe, video=as_pipeline_video(vcu.frames), mask=as_pipeline_mask(vcu.masks),
                               ref_images=[PIL_Image.fromarray(ref)])
    check(C.vace_context(vcu, vae), theirs)


def test_mask_packing_layout_is_pipelines(pipe):
    """Space-to-depth channel order and the nearest-exact time resize, against prepare_masks directly."""
    r = np.random.default_rng(10)
    for t in (5, 17):
        m = (r.random((1, 1, t, H, W)) > 0.5).astype(np.float32)
        theirs = pipe.prepare_masks(torch.from_numpy(np.repeat(m, 3, axis=1)), [[]]).numpy()
        np.testing.assert_array_equal(C.pack_mask(m, (4, 8, 8)), theirs)
    m = np.zeros((1, 1, 1, 16, 16), np.float32)
    m[0, 0, 0, 3, 5] = 1  # pixel (3, 5) -> latent pixel (0, 0), channel 3*8 + 5
    packed = C.pack_mask(m, (4, 8, 8))
    assert packed[0, 29, 0, 0, 0] == 1 and packed.sum() == 1


# ----------------------------------------------------------------------------- builders and composites


def test_builders_shapes_and_semantics():
    assert C.latent_frames(81) == 21 and C.latent_frames(1) == 1
    with pytest.raises(C.ConditionError, match="1 \\+ 4k"):
        C.latent_frames(80)
    ext = C.extend("first_last_frame", 9, first=np.zeros((3, 16, 16)), last=np.ones((3, 16, 16)))
    assert ext.masks[0, 0, :, 0, 0].tolist() == [0, 1, 1, 1, 1, 1, 1, 1, 0]
    clip = C.extension_from_video(rng_video(11, t=9, h=16, w=16), "last_clip", clip_frames=3)
    assert clip.masks[0, 0, :, 0, 0].tolist() == [1] * 6 + [0] * 3
    with pytest.raises(C.ConditionError, match="takes first frames"):
        C.extend("first_frame", 9, last=np.zeros((3, 16, 16)))
    with pytest.raises(C.ConditionError, match="control kind"):
        C.v2v(rng_video(0), "canny")
    sized = C.outpaint(rng_video(12, h=32, w=32), top=0.5, height=48, width=32)
    assert sized.frames.shape[-2:] == (48, 32)
    assert sized.masks[0, 0, 0, :16].all() and not sized.masks[0, 0, 0, 16:].any()
    soft = C.VCU(np.zeros((1, 3, 1, 16, 16)), np.full((1, 1, 1, 16, 16), 0.6))
    assert set(np.unique(soft.masks)) == {1.0}  # binarised at 0.5 on construction


def test_composites_follow_release_rules():
    video, pose = rng_video(13), rng_video(14)
    inp, ctl = C.inpaint(video, rect_mask()), C.v2v(pose, "pose")
    both = C.compose(inp, ctl)  # pose fills the region to repaint; the rest of the video is kept
    m = rect_mask()
    np.testing.assert_allclose(both.frames, video * (1 - m) + pose * m)
    np.testing.assert_array_equal(both.masks, m)
    np.testing.assert_array_equal(C.compose(ctl, inp).frames, both.frames)
    ext = C.extension_from_video(video, "first_frame")
    ec = C.compose(ctl, ext)  # the kept first frame wins over the control, in either order
    np.testing.assert_array_equal(ec.frames[:, :, 0], video[:, :, 0])
    np.testing.assert_array_equal(ec.frames[:, :, 1:], pose[:, :, 1:])
    assert ec.masks[0, 0, :, 0, 0].tolist() == [0, 1, 1, 1, 1]
    ref = C.r2v([np.zeros((3, 8, 8))], T, H, W)
    animate = C.compose(ref, ctl, C.r2v([np.ones((3, 8, 8))], T, H, W))
    assert animate.num_refs == 2 and animate.kind == "control" and animate.task == "r2v+pose+r2v"
    np.testing.assert_array_equal(animate.frames, ctl.frames)
    with pytest.raises(C.ConditionError, match="share"):
        C.compose(ctl, C.t2v(9, H, W))


def test_noise_shape_and_drop_reference_frames(vae):
    vcu = C.r2v([np.zeros((3, 8, 8)), np.zeros((3, 8, 8))], 17, H, W)
    shape = C.noise_shape(vcu, vae)
    assert shape == (1, Z, 2 + 5, H // 8, W // 8)
    lat = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    np.testing.assert_array_equal(C.drop_reference_frames(lat, 2), lat[:, :, 2:])
    assert C.latent_shape(None, 81, 480, 832) == (1, 16, 21, 60, 104)


# ----------------------------------------------------------------------------- the zero-encode cache


def test_zero_cache_identical_and_skips_encodes(vae):
    cache = C.ZeroLatentCache()
    vcu = C.t2v(T, H, W)
    vae.encode_calls = 0
    plain = np.asarray(C.vace_context(vcu, vae, zero_cache=None))
    assert vae.encode_calls == 2  # inactive and reactive
    vae.encode_calls = 0
    first = np.asarray(C.vace_context(vcu, vae, zero_cache=cache))
    assert vae.encode_calls == 1  # zeros once: both halves share it
    second = np.asarray(C.vace_context(vcu, vae, zero_cache=cache))
    assert vae.encode_calls == 1  # nothing new
    np.testing.assert_array_equal(first, plain)
    np.testing.assert_array_equal(second, plain)
    # a mixed batch: only the non-zero sample of the reactive half is encoded
    mixed = C.batch_vcus([C.t2v(T, H, W), C.v2v(rng_video(15), "depth")])
    vae.encode_calls = vae.encoded_samples = 0
    cached = np.asarray(C.vace_context(mixed, vae, zero_cache=cache))
    assert (vae.encode_calls, vae.encoded_samples) == (1, 1)
    uncached = np.asarray(C.vace_context(mixed, vae, zero_cache=None))
    np.testing.assert_allclose(cached, uncached, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- files end to end


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("task")
    t, h, w = 17, 32, 48
    yy, xx = np.mgrid[0:h, 0:w]
    video = np.stack([np.stack([(xx * 5 + i * 7) % 256, (yy * 7) % 256, np.full_like(xx, 40 + i)], -1)
                      for i in range(t)]).astype(np.uint8)
    mask = np.zeros((t, h, w), np.uint8)
    mask[:, 8:24, 16:40] = 255
    mask[:4] = 0  # the first frames are kept entirely
    video[mask > 0] = 127  # grey marks the missing content
    paths = {
        "video": video_io.write_video(d / "src_video.mp4", video, fps=16),
        "mask": video_io.write_video(d / "src_mask.mp4", mask, fps=16),
        "short_mask": video_io.write_video(d / "short_mask.mp4", mask[:13], fps=16),
        "small_mask": video_io.write_video(d / "small_mask.mp4", mask[:, :, :32], fps=16),
    }
    ref = np.zeros((20, 12, 4), np.uint8)
    ref[..., :3] = 200
    ref[..., 3] = 255
    ref[:5, :, 3] = 0  # transparent top rows -> white
    PIL_Image.fromarray(ref, "RGBA").save(d / "ref.png")
    paths["ref"] = d / "ref.png"
    (d / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 20)
    paths.update(corrupt=d / "corrupt.mp4", corrupt_png=d / "corrupt.png", missing=d / "missing.mp4")
    return paths, mask


def test_files_end_to_end(files, vae):
    paths, mask = files
    vcu = C.read_task_inputs(paths["video"], paths["mask"], [paths["ref"]], num_frames=17, height=32, width=48)
    assert vcu.task == "r2v+mv2v" and vcu.frames.shape == (1, 3, 17, 32, 48) and vcu.refs.shape == (1, 1, 3, 32, 48)
    np.testing.assert_array_equal(vcu.masks[0, 0], mask / 255.0)  # survives H.264 once binarised at 0.5
    src = video_io.read_video(paths["video"])  # what the VCU frames should be (same decode, no resize)
    np.testing.assert_allclose(vcu.frames[0].transpose(1, 2, 3, 0), src, atol=1e-6)
    missing = np.abs(vcu.frames[0][:, vcu.masks[0, 0] > 0])  # grey 127 ~ 0 where content is missing
    assert np.median(missing) < 0.02 and missing.max() < 0.15  # (H.264 rings a little at the block's edges)
    ref = vcu.refs[0, 0]
    assert np.all(ref[:, :, :14] == 1.0)  # letterbox bars: 20x12 -> 32x19 centred in 48 columns
    assert np.allclose(ref[:, :7, 20], 1.0, atol=1e-6) and np.allclose(ref[:, 12:, 20], 200 / 127.5 - 1, atol=1e-5)
    ctx = C.vace_context(vcu, vae)
    assert ctx.shape == (1, 2 * Z + 64, 1 + 5, 4, 6)
    # resized read: cover + centre crop, masks still binary
    small = C.read_task_inputs(paths["video"], paths["mask"], num_frames=9, height=16, width=16)
    assert small.frames.shape == (1, 3, 9, 16, 16) and set(np.unique(small.masks)) <= {0.0, 1.0}
    t2v = C.read_task_inputs(num_frames=5, height=16, width=32)
    assert t2v.task == "t2v" and np.all(t2v.masks == 1) and np.all(t2v.frames == 0)
    auto = C.read_task_inputs(paths["video"], height=32, width=48, num_frames=None)
    assert auto.num_frames == 17 and auto.task == "v2v" and np.all(auto.masks == 1)


def test_file_errors_name_the_file(files):
    paths, _ = files
    cases = [
        (dict(src_video=paths["video"], src_mask=paths["small_mask"]), C.ConditionError, "small_mask.mp4 is 32x32"),
        (dict(src_video=paths["video"], src_mask=paths["short_mask"]), C.ConditionError,
         "short_mask.mp4 has 13 frames"),
        (dict(src_video=paths["corrupt"]), video_io.VideoError, "corrupt.mp4 could not be read as a video"),
        (dict(src_video=paths["missing"]), video_io.VideoError, "missing.mp4 does not exist"),
        (dict(src_video=paths["video"], num_frames=21), video_io.VideoError, "src_video.mp4 has 17 frames, 21"),
        (dict(src_video=paths["video"], src_ref_images=[paths["corrupt_png"]]), video_io.VideoError,
         "corrupt.png could not be read as an image"),
        (dict(src_mask=paths["mask"]), C.ConditionError, "src_mask .*src_mask.mp4 was given without a src_video"),
    ]
    for kwargs, err, pattern in cases:
        kwargs.setdefault("num_frames", 17)
        with pytest.raises(err, match=pattern) as info:
            C.read_task_inputs(height=32, width=48, **kwargs)
        msg = str(info.value)
        assert msg.count(". ") == 0 and msg.endswith("."), msg  # one sentence
        assert isinstance(info.value, ValueError)
    with pytest.raises(C.ConditionError, match="1 \\+ 4k .* got 16"):
        C.read_task_inputs(paths["video"], num_frames=16, height=32, width=48)
    with pytest.raises(C.ConditionError, match="multiples of 16x16 .* got 40x48"):
        C.read_task_inputs(paths["video"], num_frames=17, height=40, width=48)


# ----------------------------------------------------------------------------- the Flax VAE


def test_flax_vae_gives_the_same_context(tmp_path, torch_vae, vae):
    from vdot_jax.weights.wan_vae import load_vae
    torch_vae.save_pretrained(tmp_path / "vae")
    flax_vae = load_vae(tmp_path / "vae")
    assert C.vae_geometry(flax_vae) == (Z, (4, 8, 8))
    vcu = C.compose(C.r2v([np.linspace(-1, 1, 3 * 16 * 16).reshape(3, 16, 16)], T, H, W), C.v2v(rng_video(16), "depth"))
    ours = np.asarray(C.vace_context(vcu, flax_vae, zero_cache=None))
    check(ours, np.asarray(C.vace_context(vcu, vae, zero_cache=None)), atol=1e-4)
