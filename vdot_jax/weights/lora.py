"""The student as a low-rank delta against its teacher: LoRA files diffusers and ComfyUI load onto the teacher.

For every linear layer the weight difference ``D = W_student - W_teacher`` (PyTorch orientation ``[out, in]``)
is factorised by a truncated SVD, ``D ~ B @ A`` with ``B = U_r sqrt(S_r)`` and ``A = sqrt(S_r) V_r^T``; at full
rank the factorisation is exact (``B = D, A = I`` or ``B = I, A = D``, whichever is smaller). Ranks below
``min(out, in) / 4`` use a randomised SVD (range finder, power iterations); the error written in the report is
always measured on the factors as stored, never estimated. Every LoRA module gets the same rank (factors are
zero-padded where a layer is narrower than the rank), so no per-module rank pattern is needed; no ``alpha`` is
written, so loaders apply the factors with scale 1.

Layouts (``LAYOUTS``)::

    diffusers   transformer.blocks.0.attn1.to_q.lora_A.weight [r, in]   lora_B.weight [out, r]   lora_B.bias [out]
                (diffusers-native PEFT names; WanVACEPipeline.load_lora_weights / transformer.load_lora_adapter)
    wan         diffusion_model.blocks.0.self_attn.q.lora_down.weight   .lora_up.weight   .diff_b   .diff
                (original Wan names, the ComfyUI/Kijai convention; diffusers converts it on load)
    comfyui     "wan" plus the VACE blocks and the patch embeddings (ComfyUI patches any model key; diffusers'
                converter refuses LoRA keys outside the main blocks, so it cannot load this one)

What each layout carries (anything that did not change is left out of every layout):

===================  ==========================  ===========================  ===========================
parameter            diffusers                   wan                          comfyui
===================  ==========================  ===========================  ===========================
linear weights       LoRA (all, VACE included)   LoRA (main blocks, embedders, head)      LoRA (all)
linear biases        lora_B.bias                 .diff_b                      .diff_b
patch embeddings     LoRA (Conv3d, + bias)       .diff / .diff_b (1)          .diff / .diff_b
norms (q/k RMS,      not carried                 .diff / .diff_b (1)          .diff / .diff_b
  cross-attn LN)
modulation tables    not carried                 .diff (1)                    .diff
VACE blocks          LoRA                        not carried                  LoRA / .diff
===================  ==========================  ===========================  ===========================

(1) written for ComfyUI, dropped by diffusers' loader (``_convert_non_diffusers_wan_lora_to_diffusers`` removes
norm diffs and ignores the remaining ``.diff`` keys). The report lists, per layer, what the file holds and what
diffusers applies, the relative reconstruction error, and -- when ``probe`` is on -- the end-to-end output error
of the teacher with the delta as diffusers applies it (and as the whole file holds it) against the student, on
a small fixed input, computed with our own model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Mapping

import numpy as np

from vdot_jax.errors import VdotError
from vdot_jax.models.config import WanConfig
from vdot_jax.weights.keymap import Entry, np_dtype
from vdot_jax.weights.wan_transformer import WAN_TO_DIFFUSERS, transformer_keymap

LAYOUTS = ("diffusers", "wan", "comfyui")
FILES = {"diffusers": "pytorch_lora_weights.safetensors", "wan": "lora_wan.safetensors",
         "comfyui": "lora_comfyui.safetensors"}
REPORT = "lora_report"
RANDOMIZED_BELOW = 0.25  # randomised SVD when rank < this fraction of min(out, in) (and the matrix is large)
_RANDOMIZED_MIN_DIM = 256
PROBE_AUTO_MAX_PARAMS = 3_000_000_000  # the probe holds three copies of the transformer


class LoraError(VdotError, ValueError):
    """The two models cannot be compared (different architectures) or the request makes no sense."""


# ----------------------------------------------------------------------------- factorisation


def factorize(d: np.ndarray, rank: int | None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``d [m, n] ~ b [m, r] @ a [r, n]`` with r = min(rank, m, n) (None: full rank, exact)."""
    d = np.asarray(d, np.float64)
    m, n = d.shape
    k = min(m, n)
    r = k if rank is None else min(int(rank), k)
    if r >= k:  # exact: the smaller identity factor
        return (d, np.eye(n)) if n <= m else (np.eye(m), d)
    if k >= _RANDOMIZED_MIN_DIM and r < RANDOMIZED_BELOW * k:
        u, s, vt = _randomized_svd(d, r, seed)
    else:
        u, s, vt = np.linalg.svd(d, full_matrices=False)
    root = np.sqrt(s[:r])
    return u[:, :r] * root, root[:, None] * vt[:r]


def _randomized_svd(d: np.ndarray, r: int, seed: int, oversample: int = 16, power: int = 4):
    """Halko-Martinsson-Tropp range finder with subspace (power) iterations; returns u, s, vt of rank r + p."""
    m, n = d.shape
    p = min(min(m, n) - r, max(oversample, r // 2))
    q = np.random.default_rng(seed).standard_normal((n, r + p))
    y, _ = np.linalg.qr(d @ q)
    for _ in range(power):
        z, _ = np.linalg.qr(d.T @ y)
        y, _ = np.linalg.qr(d @ z)
    small = y.T @ d
    u_s, s, vt = np.linalg.svd(small, full_matrices=False)
    return y @ u_s, s, vt


def _pad_rank(b: np.ndarray, a: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    r = a.shape[0]
    if r == rank:
        return b, a
    return (np.concatenate([b, np.zeros((b.shape[0], rank - r), b.dtype)], 1),
            np.concatenate([a, np.zeros((rank - r, a.shape[1]), a.dtype)], 0))


# ----------------------------------------------------------------------------- what each key is


def _kind(key: str, layouts: Mapping[str, str]) -> str:
    """linear | conv | bias | norm | modulation (diffusers names)."""
    if key.endswith("scale_shift_table"):
        return "modulation"
    module, _, leaf = key.rpartition(".")
    if re.search(r"(^|\.)norm(_q|_k|\d*)$", module):
        return "norm"
    if leaf == "weight":
        return "linear" if layouts[key].startswith("linear") else "conv"
    if leaf == "bias" and f"{module}.weight" in layouts:
        return "bias"
    raise LoraError(f"no LoRA rule for parameter {key}")


def _is_vace(key: str) -> bool:
    return key.startswith("vace_")


def _carriage(kind: str, key: str, layout: str) -> tuple[str, bool]:
    """(how the file holds the parameter: lora | bias | diff | none, whether diffusers' loader applies it)."""
    if layout == "diffusers":
        if kind in ("linear", "conv"):
            return "lora", True
        if kind == "bias":
            return "bias", True
        return "none", False
    vace = _is_vace(key)
    if vace and layout == "wan":
        return "none", False
    if kind == "linear":
        return "lora", not vace
    if kind == "bias":
        module = key.rpartition(".")[0]
        return "bias", (not vace and not module.endswith("patch_embedding"))
    return "diff", False  # conv (patch embeddings), norms, modulation tables: ComfyUI applies, diffusers drops


def _names(key: str, layout: str) -> tuple[str, str]:
    """(module base name in the file, leaf) for a diffusers key in the layout's naming."""
    if layout == "diffusers":
        module, _, leaf = key.rpartition(".")
        return f"transformer.{module}", leaf
    orig = WAN_TO_DIFFUSERS.backward(key) or key
    if orig.endswith((".weight", ".bias")):
        module, _, leaf = orig.rpartition(".")
        return f"diffusion_model.{module}", leaf
    return f"diffusion_model.{orig}", ""  # blocks.N.modulation, head.modulation


# ----------------------------------------------------------------------------- the export


@dataclasses.dataclass
class LayerReport:
    key: str  # diffusers name of the student's parameter
    kind: str  # linear | conv | bias | norm | modulation
    stored_as: str  # lora | bias | diff | none
    applied_by_diffusers: bool
    shape: tuple
    rank: int | None  # LoRA rank of the layer's delta (None for full differences)
    delta_norm: float  # ||D|| / max(||W_teacher||, ||W_student||): how much the parameter moved
    error: float  # ||D - stored|| / ||D||: relative reconstruction error of the delta (1.0 = not carried)
    weight_error: float  # ||W_student - (W_teacher + stored)|| / ||W_student||


@dataclasses.dataclass
class LoraReport:
    layout: str
    rank: int | None
    dtype: str
    file: str
    layers: list[LayerReport]
    unchanged: int  # parameters identical in both models (not written)
    output_error: dict  # probe: relative output errors (None when the probe is off)
    bytes: int

    def not_carried(self) -> list[LayerReport]:
        return [r for r in self.layers if r.stored_as == "none"]

    def dropped_by_diffusers(self) -> list[LayerReport]:
        return [r for r in self.layers if r.stored_as != "none" and not r.applied_by_diffusers]

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["not_carried"] = [r.key for r in self.not_carried()]
        d["dropped_by_diffusers"] = [r.key for r in self.dropped_by_diffusers()]
        lora = [r for r in self.layers if r.stored_as == "lora"]
        d["summary"] = {
            "lora_layers": len(lora),
            "max_lora_error": max((r.error for r in lora), default=0.0),
            "mean_lora_error": float(np.mean([r.error for r in lora])) if lora else 0.0,
            "not_carried": len(d["not_carried"]),
            "dropped_by_diffusers": len(d["dropped_by_diffusers"]),
        }
        return d

    def groups(self, rows: list[LayerReport]) -> list[tuple[str, int, float]]:
        """Rows grouped by name with block indices replaced by '*': (pattern, count, max delta_norm)."""
        out: dict[str, list[float]] = {}
        for r in rows:
            out.setdefault(re.sub(r"\.\d+\.", ".*.", r.key), []).append(r.delta_norm)
        return [(k, len(v), max(v)) for k, v in out.items()]

    def summary_lines(self) -> list[str]:
        lines = []
        for title, rows in (("not carried by this layout", self.not_carried()),
                            ("in the file but dropped by diffusers' loader (ComfyUI applies them)",
                             self.dropped_by_diffusers())):
            if rows:
                lines.append(f"{len(rows)} changed parameter(s) {title}:")
                lines += [f"  {k} ({n} tensor{'s' if n > 1 else ''}, relative change up to {m:.2e})"
                          for k, n, m in self.groups(rows)]
        return lines

    def markdown(self) -> str:
        d = self.to_json()
        s = d["summary"]
        rank = "full" if self.rank is None else self.rank
        lines = [f"# LoRA export ({self.layout} layout, rank {rank}, {self.dtype})", "",
                 f"File: `{self.file}` ({self.bytes / 2**20:.1f} MiB). {s['lora_layers']} LoRA layers, relative "
                 f"reconstruction error of the delta: mean {s['mean_lora_error']:.3e}, max {s['max_lora_error']:.3e}. "
                 f"{self.unchanged} unchanged parameter(s) left out.", ""]
        if self.output_error:
            lines += ["## End-to-end output error (probe input, our model)", "",
                      "| model | relative error vs the student |", "|---|---|"]
            lines += [f"| {k} | {v:.3e} |" for k, v in self.output_error.items() if isinstance(v, float)]
            lines.append("")
        for title, rows in (("Not carried by this layout", self.not_carried()),
                            ("In the file, dropped by diffusers' loader (ComfyUI applies them)",
                             self.dropped_by_diffusers())):
            if rows:
                lines += [f"## {title}", "", "| parameters | tensors | relative change up to |", "|---|---|---|"]
                lines += [f"| {k} | {n} | {m:.2e} |" for k, n, m in self.groups(rows)]
                lines.append("")
        lines += ["## Per layer", "",
                  "| parameter | kind | stored as | diffusers applies | rank | relative change | delta error | "
                  "weight error |", "|---|---|---|---|---|---|---|---|"]
        for r in self.layers:
            lines.append(f"| {r.key} | {r.kind} | {r.stored_as} | {'yes' if r.applied_by_diffusers else 'no'} | "
                         f"{'-' if r.rank is None else r.rank} | {r.delta_norm:.3e} | {r.error:.3e} | "
                         f"{r.weight_error:.3e} |")
        return "\n".join(lines) + "\n"


def _norm(x: np.ndarray) -> float:
    return float(np.sqrt(np.sum(np.square(x, dtype=np.float64))))


def _get(flat, e: Entry) -> np.ndarray:
    v = flat[e.path] if e.layer is None else flat[e.path][e.layer]
    return np.asarray(v)


def export_lora(student: Mapping[tuple, object], teacher: Mapping[tuple, object], cfg: WanConfig,
                out_dir: str | os.PathLike, *, rank: int | None, layout: str = "diffusers", dtype: str = "float32",
                probe: bool | None = None, seed: int = 0, progress=lambda it: it) -> LoraReport:
    """Write the student-teacher delta of two flat parameter trees (ours) of architecture ``cfg`` as a LoRA
    file in ``layout`` into OUT_DIR, with ``lora_report.json``/``.md``; returns the report.

    ``rank`` None is full rank (exact). ``probe`` (default: on below ``PROBE_AUTO_MAX_PARAMS`` parameters) runs
    the student, the teacher and the teacher with the delta applied on a small fixed input.
    """
    from vdot_jax.weights.export import write_shards

    if layout not in LAYOUTS:
        raise LoraError(f"LoRA layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if rank is not None and int(rank) < 1:
        raise LoraError(f"LoRA rank must be at least 1, got {rank}")
    keymap, shapes = transformer_keymap(cfg)
    for name, flat in (("student", student), ("teacher", teacher)):
        bad = [p for p, s in shapes.items() if p not in flat or tuple(np.shape(flat[p])) != tuple(s)]
        if bad:
            raise LoraError(f"the {name} does not have the architecture {cfg.describe()} "
                            f"({len(bad)} parameter(s) missing or mis-shaped, e.g. {'.'.join(map(str, bad[0]))})")
    n_params = sum(int(np.prod(s)) for s in shapes.values())
    probe = n_params <= PROBE_AUTO_MAX_PARAMS if probe is None else bool(probe)
    delta = _DeltaWriter(student, teacher, keymap, layout=layout, rank=rank, target=np_dtype(dtype), seed=seed,
                         probe=probe)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = FILES[layout].removesuffix(".safetensors")
    meta = {"vdot_lora_layout": layout, "vdot_lora_rank": "full" if rank is None else str(rank)}
    files = write_shards(delta.tensors(progress), out, stem, dtype=None, max_shard_bytes=2**62, metadata=meta)
    output_error = None
    if probe:
        variants = {}
        if layout != "comfyui":  # diffusers cannot load the comfyui layout at all
            variants["with the LoRA as diffusers applies it"] = delta.merged_diffusers
        if layout != "diffusers":  # in the diffusers layout the file is exactly what diffusers applies
            variants["with everything in the file"] = delta.merged_all
        output_error = probe_errors(student, teacher, cfg, variants, seed=seed)
    report = LoraReport(layout=layout, rank=None if rank is None else int(rank), dtype=dtype, file=files[0].name,
                        layers=delta.rows, unchanged=delta.unchanged, output_error=output_error,
                        bytes=sum(f.stat().st_size for f in files))
    (out / f"{REPORT}.json").write_text(json.dumps(report.to_json(), indent=2))
    (out / f"{REPORT}.md").write_text(report.markdown())
    return report


class _DeltaWriter:
    """The delta of every parameter as the tensors of one layout (``tensors``, a generator written straight into
    the file), with what the report needs gathered on the way: a row per changed parameter, the count of
    unchanged ones and, for the probe, the teacher with the deltas applied (as diffusers applies them, and all
    of the file)."""

    def __init__(self, student, teacher, keymap, *, layout: str, rank: int | None, target, seed: int,
                 probe: bool):
        self.student, self.teacher, self.keymap = student, teacher, keymap
        self.layout, self.rank, self.target, self.seed, self.probe = layout, rank, target, seed, probe
        self.layouts = {e.key: e.layout for e in keymap.entries}
        self.down, self.up = ("lora_A", "lora_B") if layout == "diffusers" else ("lora_down", "lora_up")
        lora_entries = [e for e in keymap.entries if self._kind(e) in ("linear", "conv")
                        and _carriage(self._kind(e), e.key, layout)[0] == "lora"]
        # Every LoRA module has the same rank: the largest any layer can use.
        self.uniform = max((self.layer_rank(e) for e in lora_entries), default=1)
        self.rows: list[LayerReport] = []
        self.unchanged = 0
        self.merged_diffusers: dict = {}  # path -> numpy copy of the teacher with the applied deltas
        self.merged_all: dict = {}
        self._lora_written: set[str] = set()  # modules that already have LoRA factors

    def _kind(self, e: Entry) -> str:
        return _kind(e.key, self.layouts)

    def layer_rank(self, e: Entry) -> int:
        m = e.shape[0]
        n = int(np.prod(e.shape[1:]))
        return min(m, n) if self.rank is None else min(int(self.rank), m, n)

    def tensors(self, progress=lambda it: it):
        """(file key, array) of every changed parameter, weights before their biases: the bias of a layer whose
        weight did not change still needs (zero) LoRA factors."""
        entries = sorted(self.keymap.entries, key=lambda e: (e.key.rpartition(".")[0], e.key.endswith(".bias")))
        for e in progress(entries):
            yield from self._entry(e)

    def _entry(self, e: Entry):
        kind = self._kind(e)
        ws = e.to_external(_get(self.student, e)).astype(np.float64)
        wt = e.to_external(_get(self.teacher, e)).astype(np.float64)
        d = ws - wt
        dn = _norm(d)
        if dn == 0.0:
            self.unchanged += 1
            return
        how, applied = _carriage(kind, e.key, self.layout)
        base, leaf = _names(e.key, self.layout)
        stored, r = np.zeros_like(d), None
        if how == "lora":
            stored, r = yield from self._lora(e, d, kind, base)
        elif how == "bias":
            stored = d.astype(self.target).astype(np.float64)
            if applied and e.key.rpartition(".")[0] not in self._lora_written:
                yield from self._zero_factors(e, base)
            yield (f"{base}.lora_B.bias" if self.layout == "diffusers" else f"{base}.diff_b"), d.astype(self.target)
        elif how == "diff":
            stored = d.astype(self.target).astype(np.float64)
            yield f"{base}.{'diff_b' if leaf == 'bias' else 'diff'}", d.astype(self.target)
        err = _norm(d - stored)
        self.rows.append(LayerReport(
            key=e.key, kind=kind, stored_as=how, applied_by_diffusers=applied, shape=tuple(d.shape), rank=r,
            delta_norm=dn / max(_norm(wt), _norm(ws)), error=err / dn, weight_error=err / max(_norm(ws), 1e-30)))
        if self.probe:
            if how != "none":
                self._apply(self.merged_all, e, wt + stored)
            if applied:
                self._apply(self.merged_diffusers, e, wt + stored)

    def _lora(self, e: Entry, d: np.ndarray, kind: str, base: str):
        """Yields the layer's factors, padded to the uniform rank; returns (B @ A as stored, the layer's rank)."""
        m = d.shape[0]
        b, a = factorize(d.reshape(m, -1), None if self.rank is None else self.layer_rank(e), self.seed)
        r = a.shape[0]
        b, a = _pad_rank(b, a, self.uniform)
        b, a = b.astype(self.target), a.astype(self.target)
        stored = (b.astype(np.float64) @ a.astype(np.float64)).reshape(d.shape)
        if kind == "conv":
            a = a.reshape((self.uniform,) + d.shape[1:])
            b = b.reshape(b.shape + (1,) * (d.ndim - 2))
        yield f"{base}.{self.down}.weight", a
        yield f"{base}.{self.up}.weight", b
        self._lora_written.add(e.key.rpartition(".")[0])
        return stored, r

    def _zero_factors(self, e: Entry, base: str):
        """diffusers applies a bias difference as the bias of a LoRA module (PEFT's lora_bias); when the module's
        weight did not change it gets zero factors."""
        module = e.key.rpartition(".")[0]
        w = self.keymap.by_key[f"{module}.weight"].shape
        yield f"{base}.{self.down}.weight", np.zeros((self.uniform,) + tuple(w[1:]), self.target)
        yield f"{base}.{self.up}.weight", np.zeros((w[0], self.uniform) + (1,) * (len(w) - 2), self.target)
        self._lora_written.add(module)

    def _apply(self, merged: dict, e: Entry, new_external: np.ndarray) -> None:
        if e.path not in merged:
            merged[e.path] = np.array(self.teacher[e.path], np.float32)
        value = e.to_ours(new_external).astype(np.float32)
        if e.layer is None:
            merged[e.path][...] = value
        else:
            merged[e.path][e.layer] = value


# ----------------------------------------------------------------------------- the probe


def probe_inputs(cfg: WanConfig, seed: int = 0, frames: int = 2, size: int = 4) -> dict:
    """A small fixed input for the transformer: latents [1, C, frames, size*ph, size*pw], timestep 500,
    8 text tokens, and a VACE context for VACE models (numpy float32)."""
    r = np.random.default_rng(seed)
    _, ph, pw = cfg.patch_size
    shape = (1, cfg.in_channels, frames, size * ph, size * pw)
    out = {"x": r.standard_normal(shape).astype(np.float32), "t": np.array([500.0], np.float32),
           "text": r.standard_normal((1, 8, cfg.text_dim)).astype(np.float32)}
    if cfg.is_vace:
        out["context"] = r.standard_normal((1, cfg.vace_in_channels) + shape[2:]).astype(np.float32)
    return out


def probe_errors(student, teacher, cfg: WanConfig, variants: Mapping[str, Mapping], seed: int = 0) -> dict:
    """Relative output error ||f(x) - f_student(x)|| / ||f_student(x)|| of the teacher and of each variant
    (teacher parameters with some paths replaced) on ``probe_inputs``; float32, our model."""
    from flax import nnx

    from vdot_jax.models.wan import WanModel
    from vdot_jax.weights.params import abstract_model, assign

    inputs = probe_inputs(cfg, seed)
    args = (inputs["x"], inputs["t"], inputs["text"], inputs.get("context"))

    def run(flat) -> np.ndarray:
        model = assign(abstract_model(lambda: WanModel(cfg, rngs=nnx.Rngs(0))),
                       {p: np.asarray(v, np.float32) for p, v in flat.items()})
        return np.asarray(model(*args), np.float64)

    ref = run(student)
    scale = max(_norm(ref), 1e-30)
    out = {"teacher (no LoRA)": _norm(run(teacher) - ref) / scale}
    for name, replaced in variants.items():
        out[f"teacher {name}"] = _norm(run({**teacher, **replaced}) - ref) / scale
    return out
