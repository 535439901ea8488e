"""Wan2.1 VAE: parity with diffusers' AutoencoderKLWan (the oracle), weight layouts, bounded memory, tiling.

All in float32 on a tiny config (base_dim 8, dim_mult (1,2,4,4), z_dim 4: the real structure -- 4 levels,
2 residual blocks, temporal downsampling (False, True, True) -- at a few thousand parameters per layer).
The VAE's jitted programs are compiled here at XLA backend optimisation level 0: the same HLO (and the
same buffer assignment, which the memory tests read) in a third of the CPU compile time.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
from flax import nnx

import vdot_jax
from vdot_jax.models import vae as vae_module
from vdot_jax.models.vae import WAN_LATENTS_MEAN, WAN_LATENTS_STD, VAEConfig, WanVAE, _conv, _tile_starts
from vdot_jax.weights.checkpoint_io import CheckpointError, TensorSource, save_safetensors
from vdot_jax.weights.keymap import convert_tensors
from vdot_jax.weights.params import abstract_model, assign, flat_state
from vdot_jax.weights.wan_vae import (
    convert_vae,
    infer_config,
    load_vae,
    original_rename_table,
    save_vae,
    to_diffusers_names,
    vae_keymap,
)

TINY = VAEConfig(
    base_dim=8, z_dim=4, dim_mult=(1, 2, 4, 4), num_res_blocks=2, temperal_downsample=(False, True, True),
    latents_mean=(0.3, -0.2, 0.1, 0.5), latents_std=(1.5, 0.7, 2.0, 1.1),
)
H, W = 32, 48  # non-square; latent 4 x 6
TOL = 1e-4


def _diffusers_kwargs(cfg: VAEConfig) -> dict:
    return {k: v for k, v in cfg.to_diffusers().items() if k != "_class_name"}


def _source(sd: dict, origin="test") -> TensorSource:
    return TensorSource({k: (lambda v=v: v) for k, v in sd.items()}, {k: tuple(v.shape) for k, v in sd.items()}, origin)


def _shape_source(shapes: dict, origin="meta") -> TensorSource:
    return TensorSource({k: None for k in shapes}, {k: tuple(s) for k, s in shapes.items()}, origin)


@pytest.fixture(scope="module", autouse=True)
def fast_compile():
    saved = vae_module._encode_jit, vae_module._decode_jit
    opts = {"xla_backend_optimization_level": 0}
    vae_module._encode_jit = jax.jit(vae_module._encode_fn, static_argnums=(0, 1), compiler_options=opts)
    vae_module._decode_jit = jax.jit(vae_module._decode_fn, static_argnums=(0, 1), compiler_options=opts)
    yield
    vae_module._encode_jit, vae_module._decode_jit = saved


@pytest.fixture(scope="module")
def ref():
    """The tiny diffusers model with random weights; the norm scales (initialised to ones) perturbed, and
    the decoder's last conv scaled up so that part of the output lies outside [-1, 1] (clamp exercised)."""
    torch.manual_seed(0)
    model = AutoencoderKLWan(**_diffusers_kwargs(TINY)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
        model.decoder.conv_out.weight.mul_(5.0)
    return model


@pytest.fixture(scope="module")
def ref_sd(ref):
    return {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}


@pytest.fixture(scope="module")
def ours(ref_sd):
    keymap, shapes = vae_keymap(TINY)
    flat = convert_tensors(_source(ref_sd), keymap, shapes)
    return assign(abstract_model(lambda: WanVAE(TINY, rngs=nnx.Rngs(0))), flat)


@pytest.fixture(scope="module")
def ref_dir(ref, tmp_path_factory):
    d = tmp_path_factory.mktemp("diffusers_vae")
    ref.save_pretrained(d, safe_serialization=True)
    return d


def _video(frames, seed=0, h=H, w=W, batch=1):
    return np.random.RandomState(seed).uniform(-1, 1, (batch, 3, frames, h, w)).astype(np.float32)


def _ref_encode(ref, x):
    with torch.no_grad():
        return ref.encode(torch.from_numpy(x)).latent_dist.mean.numpy()


def _ref_decode(ref, z):
    with torch.no_grad():
        return ref.decode(torch.from_numpy(np.ascontiguousarray(z))).sample.numpy()


# --------------------------------------------------------------------------- parity with diffusers


@pytest.mark.parametrize("frames", [1, 9])
def test_encode_decode_match_diffusers(ref, ours, frames):
    """Batch 2 of different clips: the VAE folds time into the batch axis, so a mix-up shows only with B > 1."""
    x = _video(frames, batch=2)
    want = _ref_encode(ref, x)
    got = ours.encode(x)
    assert got.shape == want.shape == (2, TINY.z_dim, 1 + (frames - 1) // 4, H // 8, W // 8)
    np.testing.assert_allclose(np.asarray(got), want, atol=TOL, rtol=0)
    assert np.abs(want[0] - want[1]).max() > 0.1  # two different clips

    want_x = _ref_decode(ref, want)
    got_x = np.asarray(ours.decode(want))
    assert got_x.shape == want_x.shape == (2, 3, frames, H, W)
    np.testing.assert_allclose(got_x, want_x, atol=TOL, rtol=0)
    assert 0.02 < np.mean(np.abs(want_x) == 1.0) < 0.8  # diffusers' clamp to [-1, 1] was active


@pytest.mark.parametrize("kernel,stride,pad", [((3, 3, 3), (1, 1, 1), (1, 1)), ((3, 1, 1), (2, 1, 1), (0, 0)),
                                               ((3, 1, 1), (1, 1, 1), (0, 0))])
def test_conv_lowerings_agree(kernel, stride, pad):
    """conv="2d" (time folded into the batch, one 2D conv per time tap) equals the 3D convolution."""
    rs = np.random.RandomState(0)
    x = jnp.asarray(rs.randn(2, 5, 6, 7, 3).astype(np.float32))
    k = jnp.asarray(rs.randn(*kernel, 3, 4).astype(np.float32))
    b = jnp.asarray(rs.randn(4).astype(np.float32))
    kw = dict(dtype=jnp.float32, stride=stride, pad_hw=pad)
    np.testing.assert_allclose(np.asarray(_conv(x, k, b, mode="2d", **kw)), np.asarray(_conv(x, k, b, mode="3d", **kw)),
                               atol=1e-5)


def test_bfloat16_compute(ref, ours):
    """bfloat16 compute runs through the chunk scan and stays close to float32 (errors printed)."""
    x = _video(5, seed=1)
    want = _ref_encode(ref, x)
    want_x = _ref_decode(ref, want)
    ours.set_runtime(dtype="bfloat16")
    try:
        got, got_x = np.asarray(ours.encode(x)), np.asarray(ours.decode(want))
    finally:
        ours.set_runtime(dtype="float32")
    assert got.dtype == got_x.dtype == np.float32
    enc = np.abs(got - want).mean() / np.abs(want).mean()
    dec = np.abs(got_x - want_x).mean() / np.abs(want_x).mean()
    print(f"bf16 vs fp32 (tiny model): encode max {np.abs(got - want).max():.4f} mean-rel {enc:.4f}; "
          f"decode max {np.abs(got_x - want_x).max():.4f} mean-rel {dec:.4f}")
    assert enc < 0.03 and dec < 0.03, (enc, dec)


def test_frame_and_size_rules(ours):
    with pytest.raises(ValueError, match="1 \\+ 4k frames"):
        ours.encode(np.zeros((1, 3, 8, H, W), np.float32))
    with pytest.raises(ValueError, match="multiples of 8"):
        ours.encode(np.zeros((1, 3, 5, 30, W), np.float32))
    with pytest.raises(ValueError, match=r"latents must be \[B, 4"):
        ours.decode(np.zeros((1, 16, 2, 4, 6), np.float32))


# --------------------------------------------------------------------------- weight layouts


def test_original_pth_layout(ref, ref_sd, ours, tmp_path):
    """Original Wan names (from our table, backwards) convert to exactly what diffusers' converter gives."""
    table = original_rename_table(TINY)
    original = {table.backward(k): v for k, v in ref_sd.items()}
    assert None not in original and len(original) == len(ref_sd)
    assert "encoder.conv1.weight" in original and "decoder.upsamples.7.resample.1.weight" in original
    theirs = convert_wan_vae_to_diffusers({k: torch.from_numpy(v) for k, v in original.items()})
    assert sorted(theirs) == sorted(ref_sd)
    for k, v in theirs.items():
        np.testing.assert_array_equal(v.numpy(), ref_sd[k])

    pth = tmp_path / "Wan2.1_VAE.pth"
    torch.save({k: torch.from_numpy(v) for k, v in original.items()}, pth)  # a bare state dict, like the release
    src, cfg = to_diffusers_names(_source(original))
    # the architecture is inferred from the shapes (a .pth has no config, nor latent statistics)
    assert cfg == dataclasses.replace(TINY, latents_mean=(0.0,) * 4, latents_std=(1.0,) * 4)
    assert sorted(src.keys()) == sorted(ref_sd)
    out = convert_vae(pth, tmp_path / "converted", config=TINY)
    assert out == tmp_path / "converted" / "vae"
    loaded = load_vae(tmp_path / "converted")
    want = flat_state(ours)
    for p, v in flat_state(loaded).items():
        np.testing.assert_array_equal(np.asarray(v), np.asarray(want[p]))
    direct = load_vae(pth, config=TINY)  # straight from the .pth
    z = _ref_encode(ref, _video(1, seed=3))
    np.testing.assert_array_equal(np.asarray(direct.decode(z)), np.asarray(ours.decode(z)))


def test_real_size_coverage():
    """Every parameter of the real-size VAE maps to a diffusers tensor of the same shape, and back;
    the original-name table covers the real layout as diffusers' converter does."""
    with torch.device("meta"):
        real = AutoencoderKLWan()
    theirs = {k: tuple(v.shape) for k, v in real.state_dict().items()}
    keymap, _ = vae_keymap(VAEConfig())
    ours = keymap.external_shapes()
    assert sorted(set(theirs) - set(ours)) == [] and sorted(set(ours) - set(theirs)) == []
    mismatched = [k for k in theirs if theirs[k] != ours[k]]
    assert mismatched == []

    cfg = VAEConfig()
    assert VAEConfig.from_diffusers(dict(real.config)) == cfg
    assert infer_config(_shape_source(theirs)) == cfg
    table = original_rename_table(cfg)
    original = {table.backward(k): s for k, s in theirs.items()}
    assert None not in original
    converted = convert_wan_vae_to_diffusers({k: torch.empty(s, device="meta") for k, s in original.items()})
    assert sorted(converted) == sorted(theirs)
    src, inferred = to_diffusers_names(_shape_source(original))
    assert inferred == cfg and sorted(src.keys()) == sorted(theirs)


def test_diffusers_folder_roundtrip(ref, ref_dir, ours, tmp_path):
    """diffusers folder -> converted dir (orbax) -> load gives identical outputs; a pipeline folder works too."""
    x = _video(1, seed=4)
    want = np.asarray(ours.encode(x))
    out = convert_vae(ref_dir, tmp_path / "model")
    meta = json.loads((out / "config.json").read_text())
    assert meta["component"] == "vae" and VAEConfig.from_dict(meta["config"]) == TINY
    for vae in (load_vae(tmp_path / "model"), vdot_jax.load_vae(out), load_vae(ref_dir)):
        np.testing.assert_array_equal(np.asarray(vae.encode(x)), want)
    pipe = tmp_path / "pipeline"
    (pipe / "vae").mkdir(parents=True)
    for f in ref_dir.iterdir():
        (pipe / "vae" / f.name).write_bytes(f.read_bytes())
    (pipe / "model_index.json").write_text("{}")
    np.testing.assert_array_equal(np.asarray(load_vae(pipe).encode(x)), want)
    # an in-memory model saved and restored, in bfloat16 parameters
    save_vae(ours, tmp_path / "bf16", dtype="bfloat16")
    restored = load_vae(tmp_path / "bf16")
    saved, before = flat_state(restored), flat_state(ours)
    assert set(saved) == set(before)
    for p, v in saved.items():  # the values, rounded to bfloat16 (not only the dtype)
        assert v.dtype == jnp.bfloat16, p
        np.testing.assert_array_equal(np.asarray(v), np.asarray(before[p]).astype(jnp.bfloat16), err_msg=str(p))


@pytest.mark.parametrize("fault", ["missing", "extra", "misshaped"])
def test_bad_checkpoint_names_the_key(ref_sd, tmp_path, fault):
    sd = dict(ref_sd)
    key = "decoder.up_blocks.1.resnets.0.conv_shortcut.weight"
    if fault == "missing":
        del sd[key]
    elif fault == "extra":
        key = "decoder.up_blocks.1.resnets.0.conv_extra.weight"
        sd[key] = np.zeros(3, np.float32)
    else:
        sd[key] = sd[key][:, :-1]
    (tmp_path / "config.json").write_text(json.dumps(TINY.to_diffusers()))
    save_safetensors(tmp_path / "diffusion_pytorch_model.safetensors", sd)
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        convert_vae(tmp_path, tmp_path / "out")


def test_not_a_vae_checkpoint(tmp_path):
    save_safetensors(tmp_path / "x.safetensors", {"blocks.0.attn1.to_q.weight": np.zeros((2, 2), np.float32)})
    with pytest.raises(CheckpointError, match="not a Wan VAE checkpoint"):
        load_vae(tmp_path / "x.safetensors")


# --------------------------------------------------------------------------- latent statistics


def test_normalize_matches_pipeline():
    cfg = VAEConfig()
    with torch.device("meta"):
        real = AutoencoderKLWan()
    assert tuple(real.config.latents_mean) == WAN_LATENTS_MEAN and tuple(real.config.latents_std) == WAN_LATENTS_STD
    vae = abstract_model(lambda: WanVAE(cfg, rngs=nnx.Rngs(0)))
    z = np.random.RandomState(0).randn(2, 16, 3, 4, 5).astype(np.float32) * 2
    mean = torch.tensor(real.config.latents_mean).view(1, 16, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(real.config.latents_std).view(1, 16, 1, 1, 1)
    want_norm = ((torch.from_numpy(z) - mean) * inv_std).numpy()  # WanVACEPipeline.prepare_video_latents
    want_denorm = (torch.from_numpy(z) / inv_std + mean).numpy()  # WanPipeline before vae.decode
    np.testing.assert_allclose(np.asarray(vae.normalize(z)), want_norm, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(vae.denormalize(z)), want_denorm, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(vae.denormalize(vae.normalize(z))), z, atol=1e-5)


# --------------------------------------------------------------------------- memory and tiling


def test_decode_memory_is_bounded_by_the_chunk(ours):
    """The jitted decode's temporary memory does not grow with the number of latent frames (only the
    output buffer does): 21 -> 41 latent frames must add < 5% of the output's growth in temporaries."""
    graphdef, state = nnx.split(ours)
    stats = {}
    for f in (21, 41):
        spec = jax.ShapeDtypeStruct((1, TINY.z_dim, f, 4, 4), jnp.float32)
        stats[f] = vae_module._decode_jit.lower(graphdef, "float32", state, spec).compile().memory_analysis()
    out_growth = stats[41].output_size_in_bytes - stats[21].output_size_in_bytes
    temp_growth = stats[41].temp_size_in_bytes - stats[21].temp_size_in_bytes
    print(f"decode temp bytes 21 frames {stats[21].temp_size_in_bytes}, 41 frames {stats[41].temp_size_in_bytes}; "
          f"output {stats[21].output_size_in_bytes} -> {stats[41].output_size_in_bytes}")
    assert out_growth > 0
    assert temp_growth < 0.05 * out_growth, (temp_growth, out_growth)


def test_encode_memory_is_bounded_by_the_chunk(ours):
    graphdef, state = nnx.split(ours)
    temp = {}
    for f in (41, 81):
        spec = jax.ShapeDtypeStruct((1, 3, f, 32, 32), jnp.float32)
        compiled = vae_module._encode_jit.lower(graphdef, "float32", state, spec).compile()
        temp[f] = compiled.memory_analysis().temp_size_in_bytes
    video_growth = 3 * 40 * 32 * 32 * 4
    assert temp[81] - temp[41] < 0.05 * video_growth, temp


def test_tile_blending_is_a_partition_of_unity():
    """Tiles placed and blended by ``WanVAE._tiled`` reproduce a per-pixel function exactly."""
    z = jnp.asarray(np.random.RandomState(0).randn(1, 2, 3, 13, 22).astype(np.float32))
    plan = ((6, _tile_starts(13, 6, 2)), (8, _tile_starts(22, 8, 3)))
    assert plan[0][1][-1] + 6 == 13 and plan[1][1][-1] + 8 == 22

    def up(t):  # "decode": a per-latent-pixel function at 8x resolution
        return jnp.repeat(jnp.repeat(t * 2.0 + 1.0, 8, axis=3), 8, axis=4)

    got = WanVAE._tiled(up, z, (1, 2, 3, 13 * 8, 22 * 8), plan, 1, 8, (13, 22))
    np.testing.assert_allclose(np.asarray(got), np.asarray(up(z)), atol=1e-5)
    x = up(z)  # "encode": the inverse direction, pixels -> latents
    down = lambda t: t[:, :, :, ::8, ::8] * 0.5  # noqa: E731
    got = WanVAE._tiled(down, x, (1, 2, 3, 13, 22), plan, 8, 1, (13, 22))
    np.testing.assert_allclose(np.asarray(got), np.asarray(down(x)), atol=1e-5)


def test_tiled_close_to_untiled(ref, ours):
    """Tiled decode/encode against untiled, and against diffusers' own tiling at the same tile geometry.

    Random weights have no spatial locality (the mid-block attention is global and random conv stacks do
    not decay), so neither tiling is close to untiled on this model; ours must be at least as close as
    diffusers' (64 px tiles, 32 px overlap), which guards against misplaced or mis-weighted tiles.
    """
    x = _video(5, seed=5, h=64, w=96)
    z = np.random.RandomState(6).randn(1, TINY.z_dim, 2, 8, 12).astype(np.float32)
    m0, d0 = np.asarray(ours.encode(x)), np.asarray(ours.decode(z))
    ours.set_runtime(tiling=(64, 32))  # 64 px tiles, >= 32 px overlap: 1 x 2 tiles here
    try:
        m1, d1 = np.asarray(ours.encode(x)), np.asarray(ours.decode(z))
    finally:
        ours.set_runtime(tiling=None)
    ref.enable_tiling(64, 64, 32, 32)
    try:
        rm, rd = _ref_encode(ref, x), _ref_decode(ref, z)
    finally:
        ref.disable_tiling()
    np.testing.assert_allclose(m0, _ref_encode(ref, x), atol=TOL, rtol=0)
    np.testing.assert_allclose(d0, _ref_decode(ref, z), atol=TOL, rtol=0)

    def rel(a, b):
        return np.abs(a - b).mean() / np.abs(b).mean()

    enc, dec, ref_enc, ref_dec = rel(m1, m0), rel(d1, d0), rel(rm, m0), rel(rd, d0)
    print(f"tiled vs untiled, mean abs error / mean abs signal: ours encode {enc:.3f} decode {dec:.3f}; "
          f"diffusers' tiling encode {ref_enc:.3f} decode {ref_dec:.3f}")
    assert m1.shape == m0.shape and d1.shape == d0.shape
    assert enc <= 1.1 * ref_enc and dec <= 1.1 * ref_dec, (enc, dec, ref_enc, ref_dec)
