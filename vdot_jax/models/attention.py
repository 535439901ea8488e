"""One attention function for every model, with a registry of implementations.

Layout everywhere: q [B, Sq, H, D], k and v [B, Skv, H, D] -> [B, Sq, H, D]; no mask (Wan attends to
everything, text padding included -- padded text embeddings are zero, as Wan makes them).

Implementations (``impl``, grammar ``[ulysses:]NAME[:OPTIONS]``):

- ``auto``: the backend's choice (``default_attention``): splash on TPU, cuDNN on GPU, xla elsewhere.
- ``xla``: plain XLA. Runs everywhere; materialises the [B, H, Sq, Skv] scores, so it is for tests and
  small shapes (at 32k video tokens it needs ~72 GB).
- ``cudnn``: cuDNN flash attention through ``jax.nn.dot_product_attention``; bf16/fp16 only, so fp32
  inputs are cast down and the result cast back. Odd lengths are padded to even and masked by length (cuDNN's
  backward refuses them); head dims cuDNN refuses (not a multiple of 8, over 128) run the same math in XLA.
- ``splash``: Pallas splash attention for TPU. Sequence lengths are padded to the block size and the
  padding is masked with segment ids. Block sizes follow the per-device shape (the largest of 512/256/128
  for queries and 1024/512/256/128 for keys that adds no padding) or are set as options:
  ``splash:block_q=1024,block_kv=512``. ``splash_interpret`` runs the same kernel in Pallas interpret mode
  on any backend, which is how CPU tests check it.

**Kernels run per shard.** Pallas and cuDNN calls cannot be partitioned by XLA, so under a mesh they run
inside ``jax.shard_map``. This module knows no mesh: ``attention`` gives the per-device function, and whether it
is such a kernel (``KERNELS``), to the placement the caller bound (``vdot_jax.spmd``; under
``parallel.logical.activate`` that is ``vdot_jax.parallel.attention``, the one place that wraps kernels). Without
one the function runs as it is.

``ulysses:INNER`` (e.g. ``ulysses:cudnn``) is sequence-parallel self-attention over the ``context`` mesh axis
(``vdot_jax.parallel.ulysses``): its own shard_map trades the sequence shard for a head shard with
all-to-alls and runs INNER's kernel on each device; ``local_impl`` gives INNER for attention that needs no
sequence parallelism (text cross-attention).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from vdot_jax import spmd
from vdot_jax.errors import VdotError

AttentionFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
_REGISTRY: dict[str, Callable[..., jax.Array]] = {}
# Implementations that are custom calls XLA cannot partition: they run inside shard_map under a mesh.
KERNELS = ("splash", "splash_interpret", "cudnn")
_DEFAULTS = {"tpu": "splash", "gpu": "cudnn", "cuda": "cudnn", "rocm": "cudnn"}


class AttentionSpecError(VdotError, ValueError):
    """An ``impl`` string that names no implementation or carries bad options."""


def register(name: str):
    def wrap(fn):
        _REGISTRY[name] = fn
        return fn

    return wrap


def available() -> list[str]:
    return sorted(_REGISTRY) + ["auto"]


def backend() -> str:
    """The platform programs are built for (patched in tests to show the defaults of other backends)."""
    return jax.default_backend()


def default_attention(platform: str | None = None) -> str:
    """splash on TPU, cuDNN on GPU, xla elsewhere."""
    return _DEFAULTS.get(platform or backend(), "xla")


def default_dtype(platform: str | None = None) -> str:
    """Compute dtype for ``"auto"``: bfloat16 on accelerators, float32 on CPU."""
    return "bfloat16" if (platform or backend()) in _DEFAULTS else "float32"


def resolve(impl: str, platform: str | None = None, context: int = 1) -> str:
    """``impl`` with ``auto`` replaced by the backend's choice (``ulysses:auto`` -> ``ulysses:splash`` on TPU);
    a plain ``auto`` on a mesh with ``context`` > 1 becomes Ulysses (sequence-parallel self-attention)."""
    outer, inner = _split_ulysses(impl)
    name, sep, opts = inner.partition(":")
    if name == "auto":
        inner = default_attention(platform) + sep + opts
        outer = outer or ("ulysses" if context > 1 else "")
    return f"{outer}:{inner}" if outer else inner


def _split_ulysses(impl: str) -> tuple[str, str]:
    if impl == "ulysses" or impl.startswith("ulysses:"):
        return "ulysses", impl.partition(":")[2] or "xla"
    return "", impl


def local_impl(impl: str) -> str:
    """The implementation that runs on each device (``ulysses:cudnn`` -> ``cudnn``)."""
    return _split_ulysses(impl)[1]


def _options(name: str, opts: str) -> dict[str, int]:
    out = {}
    for part in filter(None, opts.split(",")):
        key, sep, val = part.partition("=")
        if not sep or key not in ("block_q", "block_kv") or not val.isdigit() or int(val) % 128:
            raise AttentionSpecError(f"attention option {part!r} of {name!r} is not block_q=N or block_kv=N "
                                     "with N a multiple of 128")
        out[key] = int(val)
    if out and not name.startswith("splash"):
        raise AttentionSpecError(f"attention options ({opts}) are only for splash, not {name!r}")
    return out


def kernel(impl: str) -> AttentionFn:
    """The per-device function of a (non-ulysses) implementation, options bound; nothing wraps it."""
    name, _, opts = resolve(impl).partition(":")
    try:
        fn = _REGISTRY[name]
    except KeyError:
        raise AttentionSpecError(
            f"unknown attention implementation {impl!r}; choose one of {available()} or ulysses:<one of them>"
        ) from None
    kw = _options(name, opts)
    return functools.partial(fn, **kw) if kw else fn


def check(impl: str) -> str:
    """``impl`` if it parses (``[ulysses:]NAME[:OPTIONS]`` with a registered NAME or ``auto``), else
    ``AttentionSpecError``: the one check behind ``--attention`` and ``config.model.attention``, run before any
    model is loaded."""
    name, _, opts = _split_ulysses(impl)[1].partition(":")
    if name != "auto" and name not in _REGISTRY:
        raise AttentionSpecError(
            f"attention {impl!r} is not an attention implementation; choose one of {available()} or "
            "ulysses:<one of them>")
    _options("splash" if name == "auto" else name, opts)
    return impl


def attention(q: jax.Array, k: jax.Array, v: jax.Array, impl: str = "xla") -> jax.Array:
    """Softmax attention with scale 1/sqrt(head_dim), dispatched by ``impl`` (module docstring)."""
    outer, inner = _split_ulysses(resolve(impl))
    return spmd.current().attention(q, k, v, kernel(inner), per_shard=inner.partition(":")[0] in KERNELS,
                                    ulysses=bool(outer))


@register("xla")
def _xla(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, implementation="xla")


@register("cudnn")
def _cudnn(q, k, v):
    if q.shape[-1] % 8 or q.shape[-1] > 128:  # cuDNN's head-dim limits (tiny test models): the same math in XLA
        return _xla(q, k, v)
    dtype = q.dtype
    if dtype not in (jnp.bfloat16, jnp.float16):
        q, k, v = (a.astype(jnp.bfloat16) for a in (q, k, v))
    b, sq, skv = q.shape[0], q.shape[1], k.shape[1]
    if sq % 2 or skv % 2:
        # cuDNN's backward refuses odd lengths (the GAN head's one-token query): pad to even and mask the
        # padding out by length -- exact, and the scores stay un-materialised for a long odd key sequence
        pad = lambda a: jnp.pad(a, ((0, 0), (0, a.shape[1] % 2), (0, 0), (0, 0)))  # noqa: E731
        out = jax.nn.dot_product_attention(
            pad(q), pad(k), pad(v), query_seq_lengths=jnp.full((b,), sq, jnp.int32),
            key_value_seq_lengths=jnp.full((b,), skv, jnp.int32), implementation="cudnn")
        return out[:, :sq].astype(dtype)
    return jax.nn.dot_product_attention(q, k, v, implementation="cudnn").astype(dtype)


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def splash_block(n: int, candidates: tuple[int, ...]) -> int:
    """The largest candidate block that pads ``n`` no further than 128 would."""
    least = _round_up(n, 128)
    return next(b for b in candidates if _round_up(n, b) == least)


def _splash(q, k, v, *, interpret: bool, block_q: int | None = None, block_kv: int | None = None):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    b, sq, h, d = q.shape
    skv = k.shape[1]
    bq = block_q or splash_block(sq, (512, 256, 128))
    bkv = block_kv or splash_block(skv, (1024, 512, 256, 128))
    bkv_compute = min(bkv, 512)
    pq, pkv = _round_up(sq, bq), _round_up(skv, bkv)
    mask = sm.MultiHeadMask([sm.FullMask((pq, pkv)) for _ in range(h)])
    sizes = sk.BlockSizes(
        block_q=bq, block_kv_compute=bkv_compute, block_kv=bkv,
        block_q_dkv=bq, block_kv_dkv=bkv, block_kv_dkv_compute=bkv_compute,
        block_q_dq=bq, block_kv_dq=bkv,
    )
    kernel_fn = sk.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)
    # Splash takes [H, S, D] per example and does not scale q itself.
    qh = jnp.pad(q * (d**-0.5), ((0, 0), (0, pq - sq), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
    kh = jnp.pad(k, ((0, 0), (0, pkv - skv), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
    vh = jnp.pad(v, ((0, 0), (0, pkv - skv), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
    # Padded keys get segment 0 and real queries segment 1, so padding is never attended to.
    seg = sk.SegmentIds(q=(jnp.arange(pq) < sq).astype(jnp.int32), kv=(jnp.arange(pkv) < skv).astype(jnp.int32))
    run = jax.vmap(lambda a, b_, c: kernel_fn(a, b_, c, segment_ids=seg))
    if q.dtype == jnp.bfloat16:  # Mosaic cannot run bf16 matmuls at fp32 precision
        run = _default_precision(run)
    return run(qh, kh, vh).transpose(0, 2, 1, 3)[:, :sq]


def _default_precision(fn):
    """``fn`` with its forward *and* backward kernels traced at the default matmul precision. A context around
    the call alone would not do: the backward kernels are traced when the gradient is taken, outside it, so a
    "highest" default (the tests set one) reached them and Mosaic refused the bf16 matmul ("Bad lhs type")."""
    default = functools.partial(jax.default_matmul_precision, "default")

    @jax.custom_vjp
    def wrapped(*args):
        with default():
            return fn(*args)

    def fwd(*args):
        with default():
            return jax.vjp(fn, *args)  # (out, the backward with its residuals, a pytree)

    def bwd(vjp, g):
        with default():
            return vjp(g)

    wrapped.defvjp(fwd, bwd)
    return wrapped


register("splash")(functools.partial(_splash, interpret=False))
register("splash_interpret")(functools.partial(_splash, interpret=True))
