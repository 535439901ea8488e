"""Architecture of the Wan2.1 DiT and its VACE variant, plus the named real-size presets.

The architecture (what the weights mean) is kept apart from run-time options (compute dtype, attention
implementation, remat policy), which live on the model as ``Runtime`` and may change after loading.
This module does not import jax (option checks and ``vdot_jax.WanConfig`` stay light): the three ``Runtime``
methods that need it import it on use.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class WanConfig:
    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    in_channels: int = 16
    out_channels: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_dim: int = 4096
    freq_dim: int = 256
    eps: float = 1e-6
    cross_attn_norm: bool = True
    rope_theta: float = 10000.0
    rope_max_seq_len: int = 1024
    # VACE: indices of the main blocks that receive a hint; empty means plain text-to-video Wan.
    vace_layers: tuple[int, ...] = ()
    vace_in_channels: int = 96

    def __post_init__(self):
        object.__setattr__(self, "patch_size", tuple(self.patch_size))
        object.__setattr__(self, "vace_layers", tuple(int(i) for i in self.vace_layers))
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for rotary embeddings")
        if self.vace_layers:
            if list(self.vace_layers) != sorted(set(self.vace_layers)):
                raise ValueError(f"vace_layers must be strictly increasing, got {self.vace_layers}")
            if self.vace_layers[0] != 0 or self.vace_layers[-1] >= self.num_layers:
                raise ValueError(
                    f"vace_layers must start at 0 and stay below num_layers={self.num_layers}, got {self.vace_layers}"
                )

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def is_vace(self) -> bool:
        return bool(self.vace_layers)

    def describe(self) -> str:
        kind = "VACE" if self.is_vace else "text-to-video"
        vace = f", VACE layers {list(self.vace_layers)}" if self.is_vace else ""
        return f"{kind} Wan transformer (dim {self.dim}, {self.num_layers} layers{vace})"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "WanConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown WanConfig fields {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def from_diffusers(cls, d: dict) -> "WanConfig":
        """From a diffusers ``WanTransformer3DModel``/``WanVACETransformer3DModel`` config.json."""
        unsupported = {k: d[k] for k in ("image_dim", "added_kv_proj_dim", "pos_embed_seq_len") if d.get(k)}
        if unsupported:
            raise ValueError(f"image-to-video Wan variants are not supported (config has {unsupported})")
        heads, head_dim = d.get("num_attention_heads", 40), d.get("attention_head_dim", 128)
        return cls(
            dim=heads * head_dim,
            ffn_dim=d.get("ffn_dim", 13824),
            num_heads=heads,
            num_layers=d.get("num_layers", 40),
            in_channels=d.get("in_channels", 16),
            out_channels=d.get("out_channels") or d.get("in_channels", 16),
            patch_size=tuple(d.get("patch_size", (1, 2, 2))),
            text_dim=d.get("text_dim", 4096),
            freq_dim=d.get("freq_dim", 256),
            eps=d.get("eps", 1e-6),
            cross_attn_norm=d.get("cross_attn_norm", True),
            rope_max_seq_len=d.get("rope_max_seq_len", 1024),
            vace_layers=tuple(d.get("vace_layers", ())) if "vace_layers" in d else (),
            vace_in_channels=d.get("vace_in_channels", 96),
        )

    @classmethod
    def from_wan(cls, d: dict) -> "WanConfig":
        """From the ``config.json`` of an original Wan/VACE release (``WanModel`` / ``VaceWanModel`` arguments)."""
        if d.get("model_type", "t2v") not in ("t2v", "vace"):
            raise ValueError(f"only text-to-video and VACE Wan models are supported (model_type "
                             f"{d.get('model_type')!r})")
        layers = d.get("num_layers", 32)
        vace = d.get("model_type") == "vace" or "vace_layers" in d
        vace_layers = d.get("vace_layers") or (tuple(range(0, layers, 2)) if vace else ())  # VaceWanModel's default
        return cls(
            dim=d.get("dim", 2048),
            ffn_dim=d.get("ffn_dim", 8192),
            num_heads=d.get("num_heads", 16),
            num_layers=layers,
            in_channels=d.get("in_dim", 16),
            out_channels=d.get("out_dim", 16),
            patch_size=tuple(d.get("patch_size", (1, 2, 2))),
            text_dim=d.get("text_dim", 4096),
            freq_dim=d.get("freq_dim", 256),
            eps=d.get("eps", 1e-6),
            cross_attn_norm=d.get("cross_attn_norm", True),
            rope_max_seq_len=d.get("rope_max_seq_len", 1024),
            vace_layers=tuple(vace_layers),
            vace_in_channels=d.get("vace_in_dim", 96),
        )

    def to_diffusers(self) -> dict:
        d = dict(
            patch_size=list(self.patch_size),
            num_attention_heads=self.num_heads,
            attention_head_dim=self.head_dim,
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            text_dim=self.text_dim,
            freq_dim=self.freq_dim,
            ffn_dim=self.ffn_dim,
            num_layers=self.num_layers,
            cross_attn_norm=self.cross_attn_norm,
            qk_norm="rms_norm_across_heads",
            eps=self.eps,
            image_dim=None,
            added_kv_proj_dim=None,
            rope_max_seq_len=self.rope_max_seq_len,
            pos_embed_seq_len=None,
        )
        if self.is_vace:
            d.update(vace_layers=list(self.vace_layers), vace_in_channels=self.vace_in_channels)
        return d


PRECISION_DTYPES = ("float32", "bfloat16")


@dataclass
class Runtime:
    """How the model runs (not what its weights are)."""

    # compute dtype of matmuls and attention ("auto": bfloat16 on accelerators, float32 on CPU); norms and
    # modulation stay float32
    dtype: str = "auto"
    attention: str = "auto"  # see vdot_jax.models.attention (auto: splash on TPU, cudnn on GPU, xla on CPU)
    remat: str = "none"  # see vdot_jax.models.layers.REMAT_POLICIES
    # sinusoidal timestep features: float32 (Wan, diffusers, default) or bfloat16, as the VDOT release's training
    # copy of Wan computes them (docs/release_parity.md): set it to reproduce the released student exactly
    timestep_features_dtype: str = "float32"
    # the residual streams between the blocks' adds: float32 (Wan, diffusers with fp32 weights, default) or
    # bfloat16, as the VDOT release trains (its models run in bf16; docs/release_parity.md): halves what remat saves
    residual_dtype: str = "float32"
    extra: dict = field(default_factory=dict)

    def __hash__(self) -> int:  # part of the model's static graph: graphdefs are hashed as jit/cache keys
        return hash((self.dtype, self.attention, self.remat, self.timestep_features_dtype, self.residual_dtype,
                     tuple(sorted(self.extra.items()))))

    @property
    def compute_dtype(self):
        """The jnp dtype of matmuls and attention, ``auto`` resolved for the backend."""
        import jax.numpy as jnp

        from vdot_jax.models.attention import default_dtype

        return jnp.dtype(default_dtype() if self.dtype == "auto" else self.dtype)

    def resolved(self, platform: str | None = None) -> "Runtime":
        """A copy with ``auto`` dtype and attention replaced by the choices for ``platform`` (default: backend)."""
        from vdot_jax.models.attention import default_dtype, resolve

        return Runtime(dtype=default_dtype(platform) if self.dtype == "auto" else self.dtype,
                       attention=resolve(self.attention, platform), remat=self.remat,
                       timestep_features_dtype=self.timestep_features_dtype, residual_dtype=self.residual_dtype,
                       extra=dict(self.extra))

    def update(self, **changes) -> None:
        """Set options by name; unknown names and remat policies are refused."""
        from vdot_jax.models.layers import REMAT_POLICIES  # jax-free config module: imported on use

        for k, v in changes.items():
            if not hasattr(self, k):
                raise ValueError(f"unknown runtime option {k!r}")
            setattr(self, k, v)
        for name in ("timestep_features_dtype", "residual_dtype"):
            if getattr(self, name) not in PRECISION_DTYPES:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose one of {PRECISION_DTYPES}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"unknown remat policy {self.remat!r}; choose one of {sorted(REMAT_POLICIES)}")


# Real sizes (docs/method.md, "Networks"). Head dim 128 in all of them.
WAN_1_3B = WanConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30)
WAN_14B = WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)
PRESETS: dict[str, WanConfig] = {
    "wan2.1-t2v-1.3b": WAN_1_3B,
    "wan2.1-t2v-14b": WAN_14B,
    "wan2.1-vace-1.3b": dataclasses.replace(WAN_1_3B, vace_layers=tuple(range(0, 30, 2))),
    "wan2.1-vace-14b": dataclasses.replace(WAN_14B, vace_layers=tuple(range(0, 40, 5))),
}


def preset(name: str) -> WanConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}") from None
