"""LoRA export: loaded by diffusers onto the teacher it reproduces the student where the layout can carry the
difference; what it cannot carry is listed, and the reported errors (per layer and end to end) are the ones
diffusers actually gives.

Teacher and student are two tiny random diffusers ``WanVACETransformer3DModel``s (every parameter differs), so
every kind of parameter -- linear, Conv3d patch embeddings, biases, norms, modulation tables, VACE blocks --
is exercised.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")  # diffusers' LoRA loading runs on PEFT
# In the wan layout PEFT matches the LoRA target "proj_out" (the head) by suffix, so it also wraps the VACE blocks'
# proj_out layers, with zero factors; it warns about them, and they change nothing (checked below).
pytestmark = pytest.mark.filterwarnings("ignore:While injecting the PEFT adapters:RuntimeWarning")

from oracles import TINY_VACE, diffusers_transformer, run_diffusers, state_numpy  # noqa: E402
from vdot_jax.weights.checkpoint_io import open_tensors, save_safetensors  # noqa: E402
from vdot_jax.weights.convert import load_transformer  # noqa: E402
from vdot_jax.weights.lora import _randomized_svd, export_lora, factorize, probe_inputs  # noqa: E402
from vdot_jax.weights.params import flat_state  # noqa: E402

CFG = TINY_VACE
TEACHER_SEED, STUDENT_SEED = 3, 4


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(teacher flat, student flat, student diffusers state dict), ours from the diffusers weights."""
    root = tmp_path_factory.mktemp("lora_models")
    out = []
    for seed in (TEACHER_SEED, STUDENT_SEED):
        save_safetensors(root / f"{seed}.safetensors", state_numpy(diffusers_transformer(CFG, seed)))
        out.append(flat_state(load_transformer(root / f"{seed}.safetensors", config=CFG)))
    return out[0], out[1], state_numpy(diffusers_transformer(CFG, STUDENT_SEED))


def _teacher_with_lora(folder, weight_name, via_pipeline: bool):
    """A diffusers teacher with the LoRA loaded (and fused, so the effective weights can be read)."""
    teacher = diffusers_transformer(CFG, TEACHER_SEED)
    if via_pipeline:
        from diffusers import WanVACEPipeline

        pipe = WanVACEPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=None, transformer=teacher)
        pipe.load_lora_weights(str(folder), weight_name=weight_name, adapter_name="vdot")
    else:
        from diffusers.loaders.lora_pipeline import WanLoraLoaderMixin

        sd = WanLoraLoaderMixin.lora_state_dict(str(folder), weight_name=weight_name)
        teacher.load_lora_adapter(sd, prefix="transformer", adapter_name="vdot")
    return teacher


def _effective(model) -> dict[str, np.ndarray]:
    """The weights the model computes with: LoRA layers fused into their base weights."""
    model.fuse_lora(lora_scale=1.0)
    return {k.replace(".base_layer", ""): v.detach().numpy().copy() for k, v in model.state_dict().items()
            if "lora_" not in k}


def _mismatched(effective, student, atol=1e-6) -> set[str]:
    return {k for k, v in student.items() if not np.allclose(effective[k], v, rtol=0, atol=atol)}


def _rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


@pytest.mark.parametrize("layout", ["diffusers", "wan"])
def test_full_rank_lora_reproduces_what_the_layout_carries(models, tmp_path, layout, capsys):
    teacher, student, student_sd = models
    report = export_lora(student, teacher, CFG, tmp_path, rank=None, layout=layout)
    saved = json.loads((tmp_path / "lora_report.json").read_text())
    assert (tmp_path / "lora_report.md").read_text().startswith(f"# LoRA export ({layout} layout, rank full")
    keys = list(open_tensors(tmp_path / report.file).keys())
    if layout == "diffusers":
        assert "transformer.blocks.0.attn1.to_q.lora_A.weight" in keys
        assert "transformer.vace_patch_embedding.lora_B.bias" in keys
    else:
        assert "diffusion_model.blocks.0.self_attn.q.lora_down.weight" in keys
        assert "diffusion_model.blocks.0.cross_attn.o.diff_b" in keys
        assert "diffusion_model.blocks.0.modulation.diff" in keys and "diffusion_model.head.modulation.diff" in keys
        assert "diffusion_model.blocks.0.self_attn.norm_q.diff" in keys
        assert not any("vace" in k for k in keys)

    theirs = _effective(_teacher_with_lora(tmp_path, report.file, via_pipeline=True))
    lost = set(saved["not_carried"]) | set(saved["dropped_by_diffusers"])
    # exact where carried (fp32: the base weight plus the delta rounds once), different exactly where not
    assert _mismatched(theirs, student_sd) == lost
    assert all(r["error"] < 1e-7 for r in saved["layers"] if r["key"] not in lost)  # fp32 rounding of the delta
    kinds = {r["kind"] for r in saved["layers"] if r["key"] in lost}
    assert kinds == ({"norm", "modulation"} if layout == "diffusers" else {"norm", "modulation", "conv", "bias",
                                                                             "linear"})
    if layout == "wan":  # the VACE blocks and the patch embeddings are what the original names cannot carry here
        assert all(k.startswith(("vace_", "patch_embedding")) for k in lost if ("norm" not in k and "scale" not in k))

    # the end-to-end error that results, measured in diffusers on the probe input, is the one reported
    lora_model = _teacher_with_lora(tmp_path, report.file, via_pipeline=False)
    student_model = diffusers_transformer(CFG, STUDENT_SEED)
    p = probe_inputs(CFG)
    args = (p["x"], p["t"], p["text"], p["context"])
    ref = run_diffusers(student_model, *args)
    measured = _rel(run_diffusers(lora_model, *args), ref)
    reported = report.output_error["teacher with the LoRA as diffusers applies it"]
    assert measured > 1e-3  # norms and modulation tables do matter
    np.testing.assert_allclose(reported, measured, rtol=1e-4)
    np.testing.assert_allclose(report.output_error["teacher (no LoRA)"],
                               _rel(run_diffusers(diffusers_transformer(CFG, TEACHER_SEED), *args), ref), rtol=1e-4)
    if layout == "wan":  # with everything in the file (what ComfyUI applies) only the VACE blocks are missing
        assert report.output_error["teacher with everything in the file"] < reported


def test_low_rank_reported_error_is_the_measured_one(models, tmp_path):
    teacher, student, student_sd = models
    rank = 4
    report = export_lora(student, teacher, CFG, tmp_path, rank=rank, layout="diffusers", probe=False)
    theirs = _effective(_teacher_with_lora(tmp_path, report.file, via_pipeline=False))
    teacher_sd = state_numpy(diffusers_transformer(CFG, TEACHER_SEED))
    lora_rows = [r for r in report.layers if r.stored_as == "lora"]
    assert lora_rows and all(r.rank == min(rank, *r.shape[:1], int(np.prod(r.shape[1:]))) for r in lora_rows)
    for r in lora_rows:
        d = student_sd[r.key].astype(np.float64) - teacher_sd[r.key]
        measured = np.linalg.norm(theirs[r.key].astype(np.float64) - student_sd[r.key]) / np.linalg.norm(d)
        np.testing.assert_allclose(r.error, measured, rtol=1e-3, atol=1e-6, err_msg=r.key)
        # truncated SVD is optimal (Eckart-Young): the error is the tail of the singular values
        s = np.linalg.svd(d.reshape(d.shape[0], -1), compute_uv=False)
        np.testing.assert_allclose(r.error, np.sqrt(np.sum(s[rank:] ** 2) / np.sum(s ** 2)), rtol=1e-6, atol=1e-9)
    assert max(r.error for r in lora_rows) > 0.1  # rank 4 of 32: far from exact
    for r in report.layers:
        if r.stored_as == "bias":
            assert r.error < 1e-7


def test_comfyui_layout_adds_the_vace_blocks_and_diffusers_refuses_it(models, tmp_path):
    teacher, student, _ = models
    report = export_lora(student, teacher, CFG, tmp_path, rank=2, layout="comfyui", probe=False)
    keys = set(open_tensors(tmp_path / report.file).keys())
    assert "diffusion_model.vace_blocks.0.self_attn.q.lora_down.weight" in keys
    assert "diffusion_model.vace_blocks.0.before_proj.lora_up.weight" in keys
    assert "diffusion_model.vace_patch_embedding.diff" in keys and "diffusion_model.patch_embedding.diff_b" in keys
    assert not report.not_carried()
    with pytest.raises(ValueError):
        _teacher_with_lora(tmp_path, report.file, via_pipeline=False)


def test_bias_only_changes_and_unchanged_parameters(models, tmp_path):
    """A layer whose weight did not move but whose bias did still loads (zero factors carry the bias);
    unchanged parameters are left out of the file."""
    teacher, _, _ = models
    student = {p: np.array(v) for p, v in teacher.items()}
    q = ("blocks", "attn1", "to_q", "bias")
    student[q][1] += 0.5
    report = export_lora(student, teacher, CFG, tmp_path, rank=3, layout="diffusers")
    assert [r.key for r in report.layers] == ["blocks.1.attn1.to_q.bias"]
    from vdot_jax.weights.wan_transformer import transformer_keymap

    assert report.unchanged == len(transformer_keymap(CFG)[0].entries) - 1
    theirs = _effective(_teacher_with_lora(tmp_path, report.file, via_pipeline=False))
    expected = state_numpy(diffusers_transformer(CFG, TEACHER_SEED))
    expected["blocks.1.attn1.to_q.bias"] = expected["blocks.1.attn1.to_q.bias"] + 0.5
    assert not _mismatched(theirs, expected, atol=1e-6)
    assert report.output_error["teacher with the LoRA as diffusers applies it"] < 1e-6


def test_randomized_svd_is_near_optimal_and_exact_factors_at_full_rank():
    r = np.random.default_rng(0)
    # a 600x400 matrix with a decaying spectrum, rank 12 (randomised path: 12 < 0.25 * 400)
    u, _ = np.linalg.qr(r.standard_normal((600, 400)))
    v, _ = np.linalg.qr(r.standard_normal((400, 400)))
    s = 0.9 ** np.arange(400)
    d = (u * s) @ v.T
    b, a = factorize(d, 12)
    optimal = np.sqrt(np.sum(s[12:] ** 2))
    assert np.linalg.norm(d - b @ a) <= 1.001 * optimal
    assert _randomized_svd(d, 12, seed=0)[1].shape == (28,)  # rank + oversampling
    for shape in ((5, 3), (3, 5)):
        m = r.standard_normal(shape)
        b, a = factorize(m, None)
        assert np.array_equal(b @ a, m) and a.shape[0] == 3
