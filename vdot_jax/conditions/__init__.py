"""Task inputs -> the VACE context, in three parts; one package for training and generation.

* ``conditions.vcu``: the Video Condition Unit (VCU), the task table ``TASKS`` (every VACE task once) and the
  builders (arrays in, VCU out), composition and batching;
* ``conditions.files``: files -> a VCU (the release's file conventions, and every task's files);
* ``conditions.context``: the VAE side -- the VACE context, latent shapes, the zero-latent cache.

Public API (``from vdot_jax import conditions as C``)::

    VCU(frames [B,3,T,H,W] in [-1,1], masks [B,1,T,H,W] in {0,1}, refs [B,R,3,H,W] in [-1,1], task, kind)
    TASKS: name -> Task(kind, family, src_video, src_mask, refs); CONTROL_KINDS, EXTENSION_MODES

    # builders (arrays channels-first, values in [-1, 1]; [3,T,H,W] / [1,T,H,W] get a batch axis)
    t2v(num_frames, height, width, batch_size=1)
    r2v(refs, num_frames, height, width)                      # refs letterboxed onto a white canvas
    v2v(control, kind="depth")                                # depth/pose/scribble/flow/gray/layout
    inpaint(video, mask)                                      # masked region greyed (0), mask 1 there
    outpaint(video, top=, bottom=, left=, right=, height=None, width=None)
    extend(mode, num_frames, first=None, last=None)           # first_frame, last_frame, first_clip,
    extension_from_video(video, mode, clip_frames=1)          #   last_clip, first_last_frame, first_last_clip
    compose(*vcus)                                            # composites (rules in conditions.vcu)
    batch_vcus(vcus)                                          # stack samples along the batch axis

    read_task_inputs(src_video=None, src_mask=None, src_ref_images=None, num_frames=81, height=480, width=832)
    task_inputs(task=None, src_video=, src_mask=, ref_images=, frames=, height=, width=, expand=, clip_frames=)

    vace_context(vcu, vae) -> [B, 2*z + sh*sw, R + f, h, w]   # 96 channels for Wan (16 + 16 + 64)
    latent_frames(num_frames, vae); latent_shape(vae, ...); noise_shape(vcu, vae)
    drop_reference_frames(latents, num_refs)
    letterbox(image [3,h,w], height, width); video_from_frames / frames_from_video (layout changes)
"""

from vdot_jax.conditions.context import (
    REFERENCE_ORDERS, ZERO_LATENTS, ZeroLatentCache, drop_reference_frames, latent_frames, latent_shape, noise_shape,
    pack_mask, vace_context, vae_geometry,
)
from vdot_jax.conditions.files import read_task_inputs, task_inputs
from vdot_jax.conditions.vcu import (
    CONTROL_KINDS, EXTENSION_MODES, KINDS, TASKS, VCU, WAN_PATCH, WAN_STRIDE, ConditionError, Task, batch_vcus,
    compose, extend, extension_from_video, frames_from_video, inpaint, letterbox, outpaint, r2v, resize, t2v, v2v,
    video_from_frames,
)

__all__ = [
    "CONTROL_KINDS", "EXTENSION_MODES", "KINDS", "REFERENCE_ORDERS", "TASKS", "VCU", "WAN_PATCH", "WAN_STRIDE",
    "ZERO_LATENTS", "ConditionError", "Task", "ZeroLatentCache", "batch_vcus", "compose", "drop_reference_frames",
    "extend", "extension_from_video", "frames_from_video", "inpaint", "latent_frames", "latent_shape", "letterbox",
    "noise_shape", "outpaint", "pack_mask", "r2v", "read_task_inputs", "resize", "t2v", "task_inputs", "v2v",
    "vace_context", "vae_geometry", "video_from_frames",
]
