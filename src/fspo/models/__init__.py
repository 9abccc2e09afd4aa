"""Model loading: presets (``tiny``, the embedded ``smollm2``) and local Hugging Face folders."""

# Names a ``dtype`` option accepts (torch dtypes in :data:`fspo.models.registry.DTYPES`).
DTYPE_NAMES = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16")

# Names a ``device`` option accepts (``auto``: cuda if available, else mps, else cpu; see
# :func:`fspo.models.registry.resolve_device`).
DEVICE_NAMES = ("auto", "cpu", "cuda", "mps")


def device_option(prefix: str = ""):
    """The ``device`` field every model-loading command shares (``prefix``: e.g. "local: ")."""
    from fspo.config import opt

    return opt(
        "auto", f"{prefix}where the model runs: auto = cuda if available, else mps, else cpu", choices=DEVICE_NAMES
    )


def dtype_option(prefix: str = ""):
    """The ``dtype`` field every model-loading command shares."""
    from fspo.config import opt

    return opt(
        "float32",
        f"{prefix}model dtype; bfloat16/float16 are GPU options (about 10x slower on CPU)",
        choices=DTYPE_NAMES,
    )
