"""Building blocks shared by every model: the matmul layer, norms in float32, remat policies, and the stacking
and scanning of identical layers (nnx.vmap'ed initialisation, lax.scan over the layer axis).

Kept apart from ``wan.py`` so the text encoder, the GAN head and ``models.config`` use them without importing the
DiT (and without an import cycle).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

F32 = jnp.float32

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # full, and each layer's input (the residual stream the backward restarts from) kept in host memory
    # instead of the accelerator's: the largest saved activation at video lengths (docs/scaling.md)
    "offload": jax.checkpoint_policies.save_and_offload_only_these_names(
        names_which_can_be_saved=(), names_which_can_be_offloaded=("layer_input",), offload_src="device",
        offload_dst="pinned_host"),
}


def uniform_init(scale: float):
    def init(key, shape, dtype=F32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)

    return init


class Dense(nnx.Module):
    """Linear layer computing in a dtype chosen at call time (params keep their own dtype)."""

    def __init__(self, din: int, dout: int, *, rngs: nnx.Rngs, zero_init: bool = False):
        bound = 1.0 / math.sqrt(din)  # PyTorch's nn.Linear default range
        init = nnx.initializers.zeros_init() if zero_init else uniform_init(bound)
        self.kernel = nnx.Param(init(rngs.params(), (din, dout), F32))
        self.bias = nnx.Param(init(rngs.params(), (dout,), F32))

    def __call__(self, x: jax.Array, dtype=F32) -> jax.Array:
        return jnp.dot(x.astype(dtype), self.kernel[...].astype(dtype)) + self.bias[...].astype(dtype)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float):
        self.scale = nnx.Param(jnp.ones((dim,), F32))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(F32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...].astype(F32)).astype(x.dtype)


def layer_norm(x: jax.Array, eps: float) -> jax.Array:
    """LayerNorm without affine parameters, in float32."""
    xf = x.astype(F32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    return (xf - mean) * jax.lax.rsqrt(var + eps)


class LayerNorm(nnx.Module):
    """LayerNorm with affine parameters, in float32 (diffusers' FP32LayerNorm)."""

    def __init__(self, dim: int, eps: float):
        self.scale = nnx.Param(jnp.ones((dim,), F32))
        self.bias = nnx.Param(jnp.zeros((dim,), F32))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        return layer_norm(x, self.eps) * self.scale[...].astype(F32) + self.bias[...].astype(F32)


LAYER_STACKS = ("blocks", "vace_blocks")  # the models' stacked layers (``stack_layers``): axis 0 = layer


def is_stacked(path) -> bool:
    """Whether the pytree ``path`` (of a model's state) lies under one of its layer stacks."""
    return any(getattr(k, "key", getattr(k, "name", None)) in LAYER_STACKS for k in path)


def is_layer_kernel(path) -> bool:
    """Whether ``path`` is a layer stack's matmul kernel (the bulk of the bytes): a host-kept one is brought to
    the device one layer at a time (the teacher's forward, the streamed update). The stacks' small leaves
    (biases, norms, modulation) come in whole: libtpu 0.0.42 fails to compile a one-layer slice of bf16 ones
    from host memory (measured: a tiling check on ``bf16[1,1,6,64]``; "Sublane slicing size must be multiple
    of element packing factor" for bf16 moments)."""
    return is_stacked(path) and any(getattr(k, "key", getattr(k, "name", None)) == "kernel" for k in path)


def in_host(x) -> bool:
    """Whether ``x`` (an array or a value being traced) lives in host memory (a ``pinned_host`` sharding)."""
    return getattr(jax.typeof(x), "memory_space", None) == jax.memory.Space.Host


def to_device(tree, keep_stacks: bool = False):
    """``tree`` with its leaves that live in host memory brought to the device, inside a jitted program: the one
    way host-kept state (optimizer moments, a frozen teacher) enters a computation. ``keep_stacks``: the layer
    stacks' kernels stay where they are, for ``scan_layers`` (or the streamed update) to bring one layer at a
    time (``is_layer_kernel``)."""
    def move(path, a):
        if a is None or not in_host(a) or (keep_stacks and is_layer_kernel(path)):
            return a
        return jax.device_put(a, jax.memory.Space.Device)

    return jax.tree_util.tree_map_with_path(move, tree)


def stack_layers(cls, n: int, cfg, rngs: nnx.Rngs):
    """n independently initialised modules stacked along a leading layer axis."""

    @nnx.split_rngs(splits=n)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(r):
        return cls(cfg, rngs=r)

    return make(rngs)


def scan_layers(stack: nnx.Module, body, carry, xs, remat: str, written=None):
    """lax.scan ``body(module, carry, x) -> (carry, y)`` over a stacked module (and optional xs). A stack kept in
    host memory (``mesh.teacher_memory=host``) is brought to the device one layer at a time.

    ``written``: a buffer carried beside ``carry`` that the layers only write into (the GAN taps' features):
    ``body(module, carry, x, written) -> ((carry, written), y)``. Only ``carry`` is the layer input the remat
    policies keep (or offload) for the backward; the buffer is never saved per layer."""
    graphdef, state = nnx.split(stack)

    def step(c, inputs):
        layer_state, x = inputs
        module = nnx.merge(graphdef, to_device(layer_state))
        if written is None:
            return body(module, _named(c), x)
        c, w = c
        return body(module, _named(c), x, w)

    policy = REMAT_POLICIES[remat]
    if remat != "none":
        step = jax.checkpoint(step, policy=policy, prevent_cse=False)
    return jax.lax.scan(step, carry if written is None else (carry, written), (state, xs))


def _named(carry):
    """The layer's input, named for the ``offload`` policy (a no-op under the others)."""
    return jax.tree.map(lambda a: checkpoint_name(a, "layer_input"), carry)
