"""Tiny random PyTorch reference models (diffusers) and their weights, shared by the parity tests."""

from __future__ import annotations

import numpy as np
import torch

from vdot_jax.models.config import WanConfig
from vdot_jax.weights.checkpoint_io import TensorSource

# Tiny shapes that still exercise everything: 2 heads of 16 (RoPE split 8/4/4), text dim != model dim,
# VACE hints at unevenly spaced layers.
TINY_T2V = WanConfig(dim=32, ffn_dim=40, num_heads=2, num_layers=4, in_channels=4, out_channels=4,
                     text_dim=24, freq_dim=32, rope_max_seq_len=64)
TINY_VACE = WanConfig(dim=32, ffn_dim=40, num_heads=2, num_layers=5, in_channels=4, out_channels=4,
                      text_dim=24, freq_dim=32, rope_max_seq_len=64, vace_layers=(0, 1, 3), vace_in_channels=12)
# The trainers' tests (distillation phases, flow matching): the smallest VACE model, quick to compile.
TINY_TRAIN = WanConfig(dim=16, ffn_dim=32, num_heads=2, num_layers=2, in_channels=4, out_channels=4, text_dim=8,
                       freq_dim=16, vace_layers=(0,), vace_in_channels=12)


def diffusers_transformer(cfg: WanConfig, seed: int = 0):
    """A diffusers Wan(VACE)Transformer3DModel with every parameter perturbed (no zero-init left)."""
    from diffusers import WanTransformer3DModel, WanVACETransformer3DModel

    torch.manual_seed(seed)
    kw = cfg.to_diffusers()
    cls = WanVACETransformer3DModel if cfg.is_vace else WanTransformer3DModel
    model = cls(**kw).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def state_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def source_of(sd: dict[str, np.ndarray], origin: str = "test") -> TensorSource:
    return TensorSource({k: (lambda v=v: v) for k, v in sd.items()}, {k: tuple(v.shape) for k, v in sd.items()}, origin)


def run_diffusers(model, x, t, text, context=None, scale=None) -> np.ndarray:
    kw = {}
    if context is not None:
        kw["control_hidden_states"] = torch.tensor(context)
        if scale is not None:
            kw["control_hidden_states_scale"] = torch.tensor(np.asarray(scale, np.float32))
    with torch.no_grad():
        out = model(torch.tensor(x), torch.tensor(t), torch.tensor(text), return_dict=False, **kw)[0]
    return out.numpy()


def stream_stored_in_bf16(model):
    """A copy of diffusers ``model`` whose residual streams are rounded to bf16 where a block reads them (each
    main and VACE block's input, the output norm's) -- what ``Runtime.residual_dtype="bfloat16"`` stores between
    blocks. The first VACE block adds the main tokens to its projected context itself: rounded after that sum."""
    import copy

    m = copy.deepcopy(model)
    rnd = lambda x: x.to(torch.bfloat16).to(x.dtype)  # noqa: E731
    for block in m.blocks:
        block.register_forward_pre_hook(lambda mod, args: (rnd(args[0]), *args[1:]))
    m.norm_out.register_forward_pre_hook(lambda mod, args: (rnd(args[0]),))
    for block in getattr(m, "vace_blocks", []):  # args: hidden, text, control, temb, rope
        if block.proj_in is not None:
            proj_in, block.proj_in = block.proj_in, None
            hook = lambda mod, a, p=proj_in: (a[0], a[1], rnd(p(a[2]) + a[0]), *a[3:])  # noqa: E731
        else:
            hook = lambda mod, a: (a[0], a[1], rnd(a[2]), *a[3:])  # noqa: E731
        block.register_forward_pre_hook(hook)
    return m


# umT5 for the tiny pipelines: 2 layers of width 32, 4 heads of 8.
TINY_UMT5 = dict(vocab_size=64, d_model=32, d_ff=48, num_layers=2, num_heads=4, d_kv=8,
                 relative_attention_num_buckets=32, relative_attention_max_distance=128)


def word_tokenizer(words):
    """A WordLevel stand-in for the umT5 tokenizer: pad 0, eos 1, unk 2, then ``words``; eos appended."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                                unk_token="<unk>")


def tiny_vace_pipeline(root, dit: WanConfig, words, *, latents_mean, latents_std, shift: float = 16.0):
    """A random diffusers ``WanVACEPipeline`` (``dit``; VAE with z_dim ``dit.in_channels``; ``TINY_UMT5``; a
    ``word_tokenizer``; flow UniPC at ``shift``), norm scales perturbed, saved to ROOT/pipeline and converted with
    ``vdot convert`` (fp32 text encoder; sampled as the student by default) to ROOT/model. Returns (pipeline,
    ROOT/pipeline, ROOT/model)."""
    import transformers
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanVACEPipeline

    from vdot_jax.cli import main as vdot

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=dit.in_channels, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                           temperal_downsample=[False, True, True], latents_mean=list(latents_mean),
                           latents_std=list(latents_std)).eval()
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
    text_encoder = transformers.UMT5EncoderModel(transformers.UMT5Config(
        **TINY_UMT5, dropout_rate=0.0, feed_forward_proj="gated-gelu")).eval()
    with torch.no_grad():
        for name, p in text_encoder.named_parameters():
            if "layer_norm" in name:
                p.uniform_(0.5, 1.5)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift)
    pipe = WanVACEPipeline(tokenizer=word_tokenizer(words), text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                           transformer=diffusers_transformer(dit, seed=1))
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(root / "pipeline")
    assert vdot(["convert", "--src", str(root / "pipeline"), "--dst", str(root / "model"),
                 "--text-encoder-dtype", "float32", "--sampling", "student"]) == 0
    return pipe, root / "pipeline", root / "model"
