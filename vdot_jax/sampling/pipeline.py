"""Prompt + task inputs -> video: the pipeline behind ``vdot_jax.generate`` and ``vdot generate``.

Public API::

    pipe = Pipeline.load("models/vace-1.3b", dtype="bfloat16", mesh="fsdp=4,context=2")
    result = pipe.generate("a cat surfing", vcu=C.t2v(81, 480, 832))             # released student defaults
    result = pipe.generate("a cat surfing", vcu=vcu, steps=50, guide_scale=5.0)   # the teacher
    result.video            # float32 [B, 3, F, H, W] in [-1, 1]; result.latents (reference frames included)
    result.write("out.mp4") # 16 fps

    generate("models/vace-1.3b", "a cat surfing", src_video="in.mp4", src_mask="mask.mp4", out="out.mp4")
    vcu = C.task_inputs(task="outpaint", src_video="in.mp4", expand=(0, 0, 0.25, 0.25), frames=81, ...)

A model is a converted model directory (``vdot convert``: transformer, vae, text_encoder), a diffusers
``WanVACEPipeline``/``WanPipeline`` folder, or three separate paths. Four timed stages:

1. **text**: umT5 on the prompts, and on the negative prompts only when guidance is on, as one batch;
   repeated prompts come from the encoder's cache. Afterwards the text encoder is kept (``"none"``),
   moved to host memory (``"host"``) or dropped and reloaded when next needed (``"free"``), as
   ``text_encoder_offload`` says.
2. **conditions**: the VCU -> the VACE context (``vdot_jax.conditions.vace_context``); all-zero parts (the
   whole of a text-to-video request) come from the zero-latent cache instead of being encoded again.
3. **denoise**: ONE compiled program holding the whole UniPC/Euler ``lax.scan``; with classifier-free
   guidance cond and uncond go through the DiT as one batch of 2B. Per-step progress comes back from
   inside the program through ``jax.debug.callback`` (no host round trip decides anything). On a mesh the
   transformer's parameters are sharded by the logical rules, the inputs are replicated, activations follow
   the model's constraints, and ``context > 1`` switches self-attention to Ulysses.
4. **decode**: reference frames dropped, latents denormalised, the chunked VAE decode.

Defaults are the released student's (docs/method.md, "Sampling"): UniPC, 4 steps, shift 16, guide scale 1 (no
CFG). The teacher: ``steps=50, guide_scale=5``. The default negative prompt is empty, as in diffusers' Wan
pipelines (the Wan release ships its own, which may be passed as ``negative_prompt``).

Against diffusers' ``WanVACEPipeline`` (same weights and initial ``latents``, fp32) the video agrees to
float rounding; two conventions differ, both from ``vdot_jax.conditions``: several reference images are
prepended in the release's order (``reference_order="diffusers"`` reverses them as diffusers does), and a
guide scale below 1 still runs guidance here (diffusers switches CFG off for scales <= 1).
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vdot_jax import conditions as C
from vdot_jax import sources
from vdot_jax.conditions import task_inputs  # files -> a VCU: the front end of generate()
from vdot_jax.errors import VdotError
from vdot_jax.models.attention import resolve
from vdot_jax.models.config import Runtime
from vdot_jax.models.text_encoder import TEXT_LEN
from vdot_jax.models.wan import WanModel
from vdot_jax.parallel.sharding import model_shardings, shard_model, sharding_stats
from vdot_jax.weights import store
from vdot_jax.weights.params import abstract_model, flat_state
from vdot_jax.sampling.model_sampler import model_sampler

# The released 4-step student (docs/method.md, "Sampling") and the 50-step CFG teacher; a model directory records
# which it is (store.read_sampling), and settings not given are taken from there.
STUDENT = store.SAMPLING["student"]
TEACHER = store.SAMPLING["teacher"]
SOLVERS = ("unipc", "euler")
OFFLOAD = ("none", "host", "free")


class GenerateError(VdotError, ValueError):
    """Inputs to ``generate`` that do not fit together or do not fit the model (one sentence)."""


# ----------------------------------------------------------------------------- checks


def check_finite_video(video: np.ndarray, settings: dict) -> None:
    """A video with NaN or inf (overflow in bfloat16, a broken checkpoint) is an error, never a silent black file."""
    bad = ~np.isfinite(video)
    if bad.any():
        raise GenerateError(f"the generated video has {int(bad.sum())} non-finite values (NaN or inf) with these "
                            f"settings ({settings}); nothing was written")


def _transformer_only(model: Path, vae, text_encoder) -> None:
    """Refuse, naming it, a --model folder that holds a transformer alone (e.g. the demo's toy teacher) when the
    VAE or text encoder would have to come from it."""
    import json

    cfg = model / "config.json"
    if vae is not None and text_encoder is not None or not cfg.is_file() or (model / "vae").exists():
        return
    try:
        cls = json.loads(cfg.read_text()).get("_class_name", "")
    except (OSError, ValueError, AttributeError):
        return
    if cls not in ("WanTransformer3DModel", "WanVACETransformer3DModel"):
        return
    toy = (Path(__file__).resolve().parent.parent / "assets" / "toy_teacher") == model.resolve()
    what = ("the demo's toy teacher, a transformer that works with the toy world's own VAE and text encoder in "
            "vdot demo" if toy else f"a {cls} folder: a transformer without a VAE or text encoder")
    raise GenerateError(f"--model {model} is {what}; give a converted model directory (vdot convert) or add --vae "
                        "and --text-encoder")


# ----------------------------------------------------------------------------- results


@dataclasses.dataclass
class GenerationResult:
    video: np.ndarray  # float32 [B, 3, F, H, W] in [-1, 1]
    latents: np.ndarray  # float32 [B, z, R + f, h, w], the denoised latents (reference frames included)
    timings: dict  # seconds: text, conditions, denoise, compile, decode, total
    task: str
    settings: dict
    paths: list[Path] = dataclasses.field(default_factory=list)

    def frames(self, index: int = 0) -> np.ndarray:
        """Sample ``index`` as uint8 [F, H, W, 3]."""
        from vdot_jax.data.video_io import to_uint8

        return to_uint8(C.frames_from_video(self.video[index]))

    def write(self, path: str | os.PathLike, fps: float = 16) -> list[Path]:
        """Write the video(s) as mp4: ``path`` for one sample, ``stem_<i>.mp4`` for a batch."""
        from vdot_jax.data.video_io import write_video

        path = Path(path)
        b = self.video.shape[0]
        targets = [path] if b == 1 else [path.with_name(f"{path.stem}_{i}{path.suffix or '.mp4'}") for i in range(b)]
        self.paths = [write_video(p, self.frames(i), fps=fps) for i, p in enumerate(targets)]
        return self.paths

    def summary(self) -> str:
        t, s = self.timings, self.settings
        b, _, f, h, w = self.video.shape
        cfg = "no CFG" if s["guide_scale"] == 1.0 else f"CFG {s['guide_scale']:g}"
        out = f" -> {', '.join(str(p) for p in self.paths)}" if self.paths else ""
        return (f"generated {self.task} {b}x{f}x{h}x{w} ({s['steps']} {s['solver']} steps, shift {s['shift']:g}, "
                f"{cfg}) in {t['total']:.2f} s: text {t['text']:.2f} s, conditions {t['conditions']:.2f} s, "
                f"denoise {t['denoise']:.2f} s (compile {t['compile']:.2f} s), decode {t['decode']:.2f} s{out}")


# ----------------------------------------------------------------------------- progress from inside the scan

_STEP_HOOK: list[Callable[[], None] | None] = [None]


def _report_step(_probe) -> None:
    hook = _STEP_HOOK[0]
    if hook is not None:
        hook()


class _StepProgress:
    """Advanced by the compiled loop's callbacks: a tqdm bar on a terminal, else one ``log`` line per step."""

    def __init__(self, total: int, log: Callable[[str], None], desc: str = "denoising", log_only: bool = False):
        from tqdm import tqdm

        # log_only (progress="log"): a log line per step even on a terminal (vdot ui feeds its page from them)
        self.bar = tqdm(total=total, desc=desc, unit="step", leave=False, disable=log_only or None, file=sys.stderr)
        self.total, self.log, self.count, self.start = total, log, 0, time.perf_counter()

    def __call__(self) -> None:
        self.count += 1
        self.bar.update(1)
        if self.bar.disable:
            self.log(f"denoising step {self.count}/{self.total} done at {time.perf_counter() - self.start:.2f} s")

    def close(self) -> None:
        self.bar.close()


# ----------------------------------------------------------------------------- the pipeline


def sampling_defaults(model) -> dict:
    """{steps, shift, guide_scale} of a model path: what its model directory records, else the student's."""
    record = store.read_sampling(model.path if isinstance(model, sources.Source) else model) if model else None
    return {k: (record or STUDENT)[k] for k in STUDENT}


def _as_mesh(mesh):
    if mesh is None or isinstance(mesh, jax.sharding.Mesh):
        return mesh
    from vdot_jax.parallel.mesh import make_mesh

    try:
        return make_mesh(mesh)
    except ValueError as e:  # e.g. sizes that do not divide the devices: the option's fault
        raise GenerateError(f"mesh {mesh}: {e}") from None


class Pipeline:
    """A loaded transformer, VAE and text encoder, with the compiled denoising programs they need.

    Build it with ``Pipeline.load`` and keep it to generate many videos: compiled programs, the prompt cache
    and the zero-latent cache are reused across calls.
    """

    def __init__(self, transformer, vae, text_encoder=None, *, mesh=None, text_encoder_offload: str = "none",
                 text_encoder_loader: Callable[[], object] | None = None, log: Callable[[str], None] | None = None):
        if text_encoder_offload not in OFFLOAD:
            raise ValueError(f"text_encoder_offload must be one of {OFFLOAD}, got {text_encoder_offload!r}")
        self.transformer, self.vae = transformer, vae
        self._text_encoder, self._te_loader = text_encoder, text_encoder_loader
        self.text_encoder_offload = text_encoder_offload
        self.mesh = _as_mesh(mesh)
        self.log = log or (lambda msg: None)
        self.sampling = dict(STUDENT)  # the defaults of generate's steps, shift, guide_scale (load: the model's)
        z, _ = C.vae_geometry(vae)
        if z != transformer.cfg.in_channels:
            raise GenerateError(f"the VAE makes {z}-channel latents but the transformer takes "
                                f"{transformer.cfg.in_channels}; they are not from the same model.")
        if text_encoder is not None:
            self._check_text_encoder(text_encoder)
            if text_encoder_offload == "host":
                text_encoder.place(jax.devices("cpu")[0])

    # ---- loading

    @classmethod
    def load(cls, model=None, *, transformer=None, vae=None, text_encoder=None, tokenizer=None,
             dtype: str = "auto", vae_dtype: str = "float32", attention: str | None = None, mesh=None,
             text_encoder_offload: str = "none", text_len: int | None = None, remat: str = "none",
             log: Callable[[str], None] | None = None) -> "Pipeline":
        """Load from a model directory (or diffusers pipeline folder) ``model``; ``transformer``, ``vae`` and
        ``text_encoder`` paths override its components (or replace it). ``dtype`` is the compute dtype of the
        DiT and umT5 (parameters stay as stored; "auto": bfloat16 on accelerators, float32 on CPU), ``vae_dtype``
        the VAE's; ``attention`` ("auto" when None) is cuDNN on GPUs, splash on TPUs and XLA elsewhere; ``mesh`` ("fsdp=4,context=2" or a Mesh) shards the DiT."""
        if model is None and (transformer is None or vae is None or text_encoder is None):
            missing = [n for n, v in (("transformer", transformer), ("vae", vae), ("text encoder", text_encoder))
                       if v is None]
            raise GenerateError(f"without a model directory, the {', '.join(missing)} path"
                                f"{'s are' if len(missing) > 1 else ' is'} needed.")
        if model is not None:
            model = sources.resolve(model, what="model directory")
            _transformer_only(Path(model.path), vae, text_encoder)
            if model.kind == "model_dir":  # fail before reading gigabytes: every needed component is there
                for name, override in (("transformer", transformer), ("vae", vae), ("text_encoder", text_encoder)):
                    if override is None:
                        store.component_dir(model.path, name)
        t_src = sources.resolve(transformer, what="transformer") if transformer is not None else model
        v_src = sources.resolve(vae, what="VAE") if vae is not None else model
        e_src = sources.resolve(text_encoder, what="text encoder") if text_encoder is not None else model
        mesh = _as_mesh(mesh)
        log = log or (lambda msg: None)
        context = dict(mesh.shape).get("context", 1) if mesh is not None else 1
        inner = resolve(attention or "auto")
        if context > 1 and not inner.startswith("ulysses"):
            inner = f"ulysses:{inner}"
        runtime = Runtime(dtype=dtype, attention=inner, remat=remat).resolved()

        t0 = time.perf_counter()
        dit = sources.load_transformer(t_src, runtime=runtime, shardings=_transformer_shardings(t_src, mesh))
        if mesh is not None and mesh.size > 1:
            shardings = model_shardings(dit, mesh)
            if not all(v.sharding == shardings[p] for p, v in flat_state(dit).items()):
                shard_model(dit, mesh)
            stats = sharding_stats(flat_state(dit), shardings)
            log(f"transformer sharded over {_describe(mesh)}: {stats.per_device_bytes / 2**30:.2f} GiB per device, "
                f"{100 * stats.replicated_fraction:.1f}% of bytes replicated")
        vae_model = sources.load_vae(v_src, dtype=vae_dtype)

        def load_te():
            return sources.load_text_encoder(e_src, tokenizer=tokenizer, text_len=text_len or TEXT_LEN,
                                             runtime=Runtime(dtype=runtime.dtype))

        te = load_te()
        log(f"loaded the model in {time.perf_counter() - t0:.1f} s ({dit.cfg.describe()})")
        pipe = cls(dit, vae_model, te, mesh=mesh, text_encoder_offload=text_encoder_offload,
                   text_encoder_loader=load_te, log=log)
        pipe.sampling = sampling_defaults(model)
        return pipe

    def _check_text_encoder(self, te) -> None:
        if te.config.d_model != self.transformer.cfg.text_dim:
            raise GenerateError(f"the text encoder makes {te.config.d_model}-dim embeddings but the transformer "
                                f"takes {self.transformer.cfg.text_dim}; they are not from the same model.")

    @property
    def text_encoder(self):
        """The text encoder, reloaded if it was freed (``text_encoder_offload="free"``)."""
        if self._text_encoder is None:
            if self._te_loader is None:
                raise GenerateError("this pipeline has no text encoder; pass text embeddings instead of prompts.")
            self._text_encoder = self._te_loader()
            self._check_text_encoder(self._text_encoder)
        return self._text_encoder

    @property
    def is_vace(self) -> bool:
        return self.transformer.cfg.is_vace

    # ---- stages

    def noise(self, vcu: C.VCU, seed: int) -> jax.Array:
        """The initial noise of a VCU (reference frames included) for ``seed``: the one draw of ``generate``, and
        of ``vdot generate --batch``, which concatenates one-video draws so a row's noise is its single run's."""
        return jax.random.normal(jax.random.key(int(seed)), C.noise_shape(vcu, self.vae), jnp.float32)

    def encode_text(self, prompts: Sequence[str], negative_prompts: Sequence[str] | None = None):
        """(cond [B, L, D], uncond [B, L, D] or None): one umT5 batch for both; float32."""
        te = self.text_encoder
        accel = jax.local_devices()[0]
        if self.text_encoder_offload == "host":
            te.place(accel)
        texts = list(prompts) + list(negative_prompts or [])
        emb = jax.block_until_ready(te.encode(texts))
        b = len(prompts)
        cond, uncond = emb[:b], (emb[b:] if negative_prompts is not None else None)
        if self.text_encoder_offload == "host":
            te.place(jax.devices("cpu")[0])
        elif self.text_encoder_offload == "free":
            self._text_encoder = None
            del te
            gc.collect()
        return cond, uncond

    def encode_conditions(self, vcu: C.VCU, reference_order: str = "release"):
        """The VACE context [B, 2z + sh*sw, R + f, h, w] of a VCU, or None for a text-to-video model."""
        if not self.is_vace:
            if vcu.kind != "text" or vcu.num_refs:
                raise GenerateError(f"task {vcu.task} needs a VACE model; this transformer is text-to-video only.")
            return None
        return jax.block_until_ready(C.vace_context(vcu, self.vae, reference_order=reference_order))

    def denoise(self, noise, text, neg_text=None, context=None, *, steps: int = STUDENT["steps"],
                shift: float = STUDENT["shift"], guide_scale: float = STUDENT["guide_scale"], solver: str = "unipc",
                context_scale: float = 1.0, progress: bool = False) -> tuple[jax.Array, float]:
        """Integrate ``noise`` to sigma 0 with one compiled program; returns (latents, compile seconds)."""
        if solver not in SOLVERS:
            raise GenerateError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}.")
        if int(steps) < 1:
            raise GenerateError(f"steps must be at least 1, got {steps}.")
        guided = float(guide_scale) != 1.0
        if guided and neg_text is None:
            raise GenerateError("classifier-free guidance (guide scale != 1) needs negative text embeddings.")
        graphdef, state = nnx.split(self.transformer)
        args = (state, jnp.asarray(noise, jnp.float32), text, neg_text if guided else None, context)
        # Keyed by the graphdef (architecture and run-time options), the settings and the arguments -- not by the
        # Pipeline object -- so pipelines loaded from the same model share the program.
        program = model_sampler(graphdef, steps=int(steps), shift=float(shift), guidance=float(guide_scale),
                                solver=solver, context_scale=float(context_scale),
                                on_step=_report_step if progress else None)
        mesh_ctx = _activate(self.mesh)
        with mesh_ctx:
            if self.mesh is not None:  # whole videos per device (batch over data x fsdp where it divides)
                args = (args[0], *jax.tree.map(lambda x: _by_batch(x, self.mesh), args[1:]))
            compiled, report = program.compile(*args, mesh=self.mesh, log=self.log)
            compile_s = 0.0 if report is None else report.seconds
            bar = _StepProgress(int(steps), self.log, log_only=progress == "log") if progress else None
            _STEP_HOOK[0] = bar
            try:
                out = jax.block_until_ready(compiled(*args))
            finally:
                _STEP_HOOK[0] = None
                if bar is not None:
                    bar.close()
        return out, compile_s

    def decode(self, latents, num_refs: int = 0) -> jax.Array:
        """Denoised latents (reference frames included) -> video [B, 3, F, H, W] in [-1, 1]."""
        lat = C.drop_reference_frames(jnp.asarray(latents), num_refs)
        vae = self.vae
        if self.mesh is not None:
            with _activate(self.mesh):
                placed = _by_batch(lat, self.mesh)
            if placed.sharding.is_fully_replicated:  # one video (or a batch that does not divide): one device
                lat = jax.device_put(lat, jax.local_devices()[0])
            else:  # whole videos per device, like the denoising: the decode is split by batch too
                lat, vae = placed, self._vae_on_mesh()
        return jax.block_until_ready(vae.decode(vae.denormalize(lat)))

    def _vae_on_mesh(self):
        """The VAE with its parameters replicated over the mesh (made once), so a batch-sharded decode runs each
        device's videos where they are; the toy VAE has no parameters."""
        if getattr(self, "_vae_mesh", None) is None:
            if isinstance(self.vae, nnx.Module):
                graphdef, state = nnx.split(self.vae)
                replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
                self._vae_mesh = nnx.merge(graphdef, jax.device_put(state, replicated))
            else:
                self._vae_mesh = self.vae
        return self._vae_mesh

    # ---- everything

    def generate(self, prompt: str | Sequence[str], *, negative_prompt: str | Sequence[str] = "",
                 vcu: C.VCU | None = None, frames: int = 81, height: int = 480, width: int = 832,
                 steps: int | None = None, guide_scale: float | None = None, shift: float | None = None,
                 solver: str = "unipc", seed: int = 0, latents=None,
                 context_scale: float = 1.0, reference_order: str = "release", text_embeds=None,
                 negative_text_embeds=None, out: str | os.PathLike | None = None, fps: float = 16,
                 progress: bool = True) -> GenerationResult:
        """One batch of videos. ``vcu`` defaults to text-to-video of ``frames`` x ``height`` x ``width``;
        ``latents`` (the initial noise, shape ``noise_shape(vcu, vae)``) default to ``seed``'s normal draw;
        ``text_embeds``/``negative_text_embeds`` replace the prompts' umT5 embeddings. ``steps``, ``guide_scale``
        and ``shift`` default to ``self.sampling`` (the model directory's record, else the student's)."""
        t_start = time.perf_counter()
        steps = self.sampling["steps"] if steps is None else steps
        guide_scale = self.sampling["guide_scale"] if guide_scale is None else guide_scale
        shift = self.sampling["shift"] if shift is None else shift
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if vcu is None:
            vcu = C.t2v(frames, height, width)
        b = len(prompts) if text_embeds is None else int(np.shape(text_embeds)[0])
        if vcu.batch_size != b:
            if vcu.batch_size == 1:
                vcu = C.batch_vcus([vcu] * b)
            elif b == 1:
                prompts, b = prompts * vcu.batch_size, vcu.batch_size
            else:
                raise GenerateError(f"{b} prompts for a batch of {vcu.batch_size} task inputs; give one prompt, "
                                    f"or one per sample.")
        negs = [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt)
        if len(negs) == 1:
            negs = negs * b
        if len(negs) != b:
            raise GenerateError(f"{len(negs)} negative prompts for {b} prompts; give one, or one per prompt.")
        guided = float(guide_scale) != 1.0
        shape = C.noise_shape(vcu, self.vae)
        if latents is None:
            noise = self.noise(vcu, seed)
        else:
            noise = jnp.asarray(latents, jnp.float32)
            if tuple(noise.shape) != tuple(shape):
                raise GenerateError(f"initial latents of shape {tuple(noise.shape)} do not fit the task: expected "
                                    f"{tuple(shape)} ([B, z, references + latent frames, H/8, W/8]).")

        t0 = time.perf_counter()
        if text_embeds is not None:
            cond = jnp.asarray(text_embeds, jnp.float32)
            uncond = jnp.asarray(negative_text_embeds, jnp.float32) if negative_text_embeds is not None else None
            if guided and uncond is None:
                uncond = self.encode_text(negs)[0]
        else:
            cond, uncond = self.encode_text(prompts, negs if guided else None)
        t_text = time.perf_counter() - t0

        t0 = time.perf_counter()
        context = self.encode_conditions(vcu, reference_order)
        t_cond = time.perf_counter() - t0

        t0 = time.perf_counter()
        lat, compile_s = self.denoise(noise, cond, uncond, context, steps=steps, shift=shift,
                                      guide_scale=guide_scale, solver=solver, context_scale=context_scale,
                                      progress=progress)
        t_denoise = time.perf_counter() - t0 - compile_s

        t0 = time.perf_counter()
        video = self.decode(lat, vcu.num_refs)
        t_decode = time.perf_counter() - t0

        result = GenerationResult(
            video=np.asarray(video), latents=np.asarray(lat), task=vcu.task,
            timings=dict(text=t_text, conditions=t_cond, denoise=t_denoise, compile=compile_s, decode=t_decode,
                         total=time.perf_counter() - t_start),
            settings=dict(steps=int(steps), shift=float(shift), guide_scale=float(guide_scale), solver=solver,
                          seed=int(seed), context_scale=float(context_scale)),
        )
        check_finite_video(result.video, result.settings)
        if out is not None:
            result.write(out, fps=fps)
        return result

    __call__ = generate


def _describe(mesh) -> str:
    return ",".join(f"{a}={s}" for a, s in mesh.shape.items() if s > 1) or "one device"


def _by_batch(x, mesh):
    """An input placed by its batch dimension under the active rules (replicated where the batch does not divide
    data x fsdp, e.g. one video)."""
    from vdot_jax.parallel.logical import activation_spec

    return jax.device_put(x, jax.sharding.NamedSharding(mesh, activation_spec(x.shape, ("batch",))))


def _activate(mesh):
    import contextlib

    if mesh is None:
        return contextlib.nullcontext()
    from vdot_jax.parallel.logical import activate

    return activate(mesh)


def _transformer_shardings(src: sources.Source, mesh):
    """Target shardings to restore a converted transformer straight into (None: load, then shard)."""
    if mesh is None or mesh.size == 1 or src.kind not in ("model_dir", "workdir"):
        return None
    cfg = sources.source_arch(src)
    return model_shardings(abstract_model(lambda: WanModel(cfg, rngs=nnx.Rngs(0))), mesh)


# ----------------------------------------------------------------------------- one call


def generate(model=None, prompt: str | Sequence[str] = "", *, negative_prompt: str | Sequence[str] = "",
             vcu: C.VCU | None = None, task: str | None = None, src_video=None, src_mask=None, ref_images=None,
             expand=None, clip_frames: int | None = None, frames: int = 81, height: int = 480, width: int = 832,
             steps: int | None = None, guide_scale: float | None = None, shift: float | None = None,
             solver: str = "unipc", seed: int = 0, latents=None,
             context_scale: float = 1.0, reference_order: str = "release", out=None, fps: float = 16,
             transformer=None, vae=None, text_encoder=None, tokenizer=None, dtype: str = "auto",
             vae_dtype: str = "float32", attention: str | None = None, mesh=None,
             text_encoder_offload: str = "free", progress: bool = True,
             log: Callable[[str], None] | None = None) -> GenerationResult:
    """Generate one video (or a batch, with a list of prompts) from a model and task inputs.

    ``model`` is a ``Pipeline`` (reused as is) or a model directory / diffusers pipeline folder, loaded for
    this call (with ``transformer``/``vae``/``text_encoder`` overriding its components); task inputs are a
    ``vcu`` or files (see ``task_inputs``), checked before any model is loaded. The rest as
    ``Pipeline.generate``. Loading once with ``Pipeline.load`` and calling ``pipe.generate`` repeatedly
    avoids reloading and recompiling.
    """
    if vcu is None:
        vcu = task_inputs(task, src_video=src_video, src_mask=src_mask, ref_images=ref_images, frames=frames,
                          height=height, width=width, expand=expand, clip_frames=clip_frames)
    elif any(v is not None for v in (task, src_video, src_mask, ref_images, expand)):
        raise GenerateError("give task inputs either as a vcu or as files, not both.")
    if solver not in SOLVERS:
        raise GenerateError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}.")
    pipe = model if isinstance(model, Pipeline) else Pipeline.load(
        model, transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, dtype=dtype,
        vae_dtype=vae_dtype, attention=attention, mesh=mesh, text_encoder_offload=text_encoder_offload, log=log)
    return pipe.generate(prompt, negative_prompt=negative_prompt, vcu=vcu, steps=steps, guide_scale=guide_scale,
                         shift=shift, solver=solver, seed=seed, latents=latents, context_scale=context_scale,
                         reference_order=reference_order, out=out, fps=fps, progress=progress)


def model_bytes(module) -> int:
    """Parameter bytes of an NNX module (for memory reports)."""
    return sum(math.prod(v.shape) * np.dtype(v.dtype).itemsize for v in flat_state(module).values())
