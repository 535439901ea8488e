"""The Gradio page of ``vdot ui`` (see ``vdot_jax.ui.backend`` for what each button does)."""

from __future__ import annotations

import contextvars
import re

import gradio as gr

from vdot_jax.errors import VdotError
from vdot_jax.ui.backend import TASK_CHOICES, TASK_HELP, Server, Settings, task_help

# What a user can cause: one sentence in the page, never a traceback (the server keeps serving).
_USER_ERRORS = (VdotError, FileNotFoundError, IsADirectoryError, ValueError)
_STEP = re.compile(r"denoising step (\d+)/(\d+)")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _path(f):
    """A gr.File value (a path, or an object with .name in older gradio) -> a path or None."""
    if f is None:
        return None
    return getattr(f, "name", f)


def build(server: Server) -> gr.Blocks:
    d = server.defaults()
    with gr.Blocks(title="vdot-jax") as page:
        gr.Markdown("# vdot-jax\nPick a model and a task, upload its files, preview what the model will see, "
                    "generate. " + ("The shipped toy teacher knows a small vocabulary: a colour, a shape and a "
                                    "motion, e.g. *a red circle moving left*." if d else ""))
        with gr.Row():
            with gr.Column():
                model = gr.Dropdown(server.choices, value=server.choices[0], label="model")
                task = gr.Dropdown(list(TASK_CHOICES), value="t2v", label="task", elem_id="task")
                note = gr.Markdown(TASK_HELP["t2v"], elem_id="task_note")
                prompt = gr.Textbox(d.get("prompt", ""), label="prompt", elem_id="prompt")
                negative = gr.Textbox("", label="negative prompt (used with guidance != 1)")
                src_video = gr.File(label="source video or image (inpaint, outpaint, extension)",
                                    file_types=["video", "image"], elem_id="src_video")
                src_mask = gr.File(label="mask video or image (inpaint): white = generate, black = keep",
                                   file_types=["video", "image"], elem_id="src_mask")
                refs = gr.File(label="reference images (any task)", file_count="multiple", file_types=["image"])
                with gr.Accordion("draw a mask or a box on the first frame (inpaint, layout)", open=False):
                    editor = gr.ImageEditor(label="paint what to generate (any colour); the first frame appears "
                                            "when a source video is uploaded", type="numpy", image_mode="RGBA",
                                            format="png", sources=(), transforms=(), elem_id="editor",
                                            brush=gr.Brush(colors=["#ffffff"], default_size=8))
                    box = gr.Textbox("", label="or a box x1,y1,x2,y2 in the video's pixels", elem_id="box")
                with gr.Row():
                    expand = gr.Textbox("0,0,0.25,0.25", label="outpaint: expand top,bottom,left,right")
                    clip_frames = gr.Number(1, label="extension *_clip: frames kept")
                with gr.Accordion("advanced settings", open=False):
                    with gr.Row():
                        frames = gr.Number(d.get("frames", 81), label="frames (1 + 4k)")
                        height = gr.Number(d.get("height", 480), label="height (multiple of 16)")
                        width = gr.Number(d.get("width", 832), label="width (multiple of 16)")
                    with gr.Row():
                        steps = gr.Number(d.get("steps", 4), label="steps")
                        guide = gr.Number(d.get("guide_scale", 1.0), label="guide scale (1 = no CFG)")
                        shift = gr.Number(d.get("shift", 16.0), label="shift")
                        seed = gr.Number(0, label="seed")
                with gr.Row():
                    preview_btn = gr.Button("preview inputs")
                    go = gr.Button("generate", variant="primary", elem_id="generate")
            with gr.Column():
                preview = gr.Video(label="task input: video (grey = generated) | mask (white = generated)",
                                   interactive=False, elem_id="preview")
                result = gr.Video(label="result", elem_id="result", interactive=False)
                info = gr.Textbox(label="settings and timings", elem_id="info")
                cmd = gr.Code(label="the same with vdot generate", language="shell")

        fields = [task, prompt, negative, frames, height, width, steps, guide, shift, seed, expand, clip_frames, box]

        def settings(task, prompt, negative, frames, height, width, steps, guide, shift, seed, expand, clip, box):
            return Settings(task=task, prompt=prompt or "", negative_prompt=negative or "", frames=frames,
                            height=height, width=width, steps=steps, guide_scale=guide, shift=shift, seed=seed,
                            expand=expand or "", clip_frames=clip, box=box or "")

        def drawn(value):
            return server.mask_file((value or {}).get("layers"))

        def do_preview(*args):
            *values, video, mask, ref, edited = args
            try:
                return str(server.preview(settings(*values), _path(video), _path(mask), [_path(r) for r in ref or []],
                                          drawn(edited)))
            except _USER_ERRORS as e:
                raise gr.Error(_one_line(e)) from None

        def do_generate(name, *args, progress=gr.Progress()):
            *values, video, mask, ref, edited = args

            # The denoising loop reports each step from an XLA callback thread, where gradio's request context
            # (which progress() reads) is unset: run it in a copy of this thread's context.
            context = contextvars.copy_context()

            def on_step(msg):
                m = _STEP.search(msg)
                if m:
                    context.run(progress, (int(m[1]), int(m[2])), desc="denoising", unit="steps")

            progress(0, desc="encoding the prompt and the task inputs")
            try:
                path, summary, line = server.generate(name, settings(*values), _path(video), _path(mask),
                                                      [_path(r) for r in ref or []], on_step=on_step,
                                                      drawn=drawn(edited))
            except _USER_ERRORS as e:
                raise gr.Error(_one_line(e)) from None
            return str(path), summary, line

        def model_defaults(name):  # the advanced section follows the model (its recorded sampling defaults)
            try:
                d = server.defaults(name)
            except _USER_ERRORS as e:
                raise gr.Error(_one_line(e)) from None
            return d["steps"], d["guide_scale"], d["shift"]

        def first_frame(video):  # the canvas for a mask or a box: the upload's first frame, at its own size
            frame = server.first_frame(_path(video))
            return None if frame is None else {"background": frame, "layers": [], "composite": frame}

        files = [src_video, src_mask, refs, editor]
        preview_btn.click(do_preview, fields + files, preview, api_name="preview")
        go.click(do_generate, [model] + fields + files, [result, info, cmd], api_name="generate")
        model.change(model_defaults, model, [steps, guide, shift], api_name="defaults")
        task.change(lambda t: task_help(t, server.annotators), task, note, api_name=False)
        src_video.change(first_frame, src_video, editor, api_name=False)
    return page


def launch(server: Server, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           max_file_size: str = "200mb", block: bool = True):
    """Serve the page: one request at a time (the queue shows each waiting user their position)."""
    page = build(server)
    page.queue(default_concurrency_limit=1)
    page.launch(server_name=host, server_port=port, share=share, max_file_size=max_file_size,
                allowed_paths=[str(server.out)], prevent_thread_lock=not block, show_error=True)
    return page
