"""Test setup: 8 fake CPU devices (for mesh tests), fast CPU compilation, fp32-exact matmuls."""

import os

# Tests are dominated by XLA compile time on CPU: the classic (non-fusion-emitter) CPU codegen at LLVM
# optimisation level 0 compiles the training phases ~5x faster, for ~1.6x slower tiny kernels.
FAST_COMPILE = "--xla_cpu_use_fusion_emitters=false --xla_backend_optimization_level=0"
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {FAST_COMPILE}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
