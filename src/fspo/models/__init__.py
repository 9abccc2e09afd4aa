"""Model loading: presets (``tiny``, the embedded ``smollm2``) and local Hugging Face folders."""

# Names a ``dtype`` option accepts (torch dtypes in :data:`fspo.models.registry.DTYPES`).
DTYPE_NAMES = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16")

# Names a ``device`` option accepts (``auto``: cuda if available, else mps, else cpu; see
# :func:`fspo.models.registry.resolve_device`).
DEVICE_NAMES = ("auto", "cpu", "cuda", "mps")
