"""Load a model and its tokenizer: the embedded SmolLM2, minedit's zoo, a local Hugging Face folder, or a hub id.

Names are resolved by :mod:`minedit.bundled` (the embedded SmolLM2 is converted from GGUF into the model
cache once); zoo models (``tiny-llava``) are assembled by :mod:`minedit.zoo`. ``device`` moves the loaded
model; ``device_map`` (with accelerate) spreads a large checkpoint over several GPUs instead.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager

import torch

from .bundled import BUNDLED, BundledModel, ModelLoadError, cache_dir, resolve  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

MULTIMODAL_TYPES = ("llava", "llava_next")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def as_dtype(dtype: "torch.dtype | str") -> torch.dtype:
    """``torch.bfloat16`` from ``"bfloat16"`` (or a ``torch.dtype`` unchanged)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def pick_device(device: "str | torch.device | None") -> torch.device | None:
    """``torch.device`` for ``device``; ``"auto"`` is CUDA when available, else the CPU. ``None`` stays ``None``."""
    if device is None:
        return None
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, ValueError):
        raise ModelLoadError(f"unknown device {device!r}; use cpu, cuda, cuda:N, mps or auto") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ModelLoadError(f"device {device} is not available on this machine")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelLoadError("device mps is not available on this machine")
    return device


def load_model(name_or_path: str = "smollm2-135m", dtype: "torch.dtype | str" = torch.float32,
               device: "str | torch.device | None" = None, device_map=None, torch_dtype=None):
    """Return ``(model, tokenizer)`` (a processor for multimodal models), in eval mode with frozen weights.

    ``name_or_path``: a bundled name (``smollm2-135m``), a model of minedit's zoo (``tiny-llava``,
    a LLaVA over SmolLM2: see :mod:`minedit.zoo.tiny_llava`), a local folder, or a Hugging Face hub id.
    Multimodal models (``config.model_type`` llava, llava_next) come with their processor.

    ``dtype`` (or its older name ``torch_dtype``, which wins when given): ``torch.float32``, ``"bfloat16"``, ...
    ``device``: where the model is moved after loading (``"cuda"``, ``"cuda:1"``, ``"mps"``, ``"auto"``).
    ``device_map``: passed to transformers' ``from_pretrained`` (e.g. ``"auto"`` spreads a 7B model over
    the GPUs with accelerate); not combined with ``device``.
    """
    dtype = as_dtype(torch_dtype if torch_dtype is not None else dtype)
    if device is not None and device_map is not None:
        raise ModelLoadError("give device or device_map, not both")
    device = pick_device(device)
    with _quiet_progress():
        model, tokenizer = _load(name_or_path, dtype, device_map)
    if device is not None:
        model.to(device)
    return model, tokenizer


@contextmanager
def _quiet_progress():
    """Hide transformers' per-tensor progress bars (walls of stderr in notebooks) during a load."""
    from transformers.utils import logging as hf_logging

    was_disabled = hf_logging.is_progress_bar_enabled() is False
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if not was_disabled:
            hf_logging.enable_progress_bar()


def _load(name_or_path: str, dtype: torch.dtype, device_map=None):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor, AutoTokenizer

    from .zoo import ZOO

    if name_or_path in ZOO:  # built by minedit itself; the artifact ships in data_samples/
        if device_map is not None:
            raise ModelLoadError(f"{name_or_path} is assembled in memory: use device=, not device_map=")
        from .zoo import tiny_llava

        return tiny_llava.load(dtype)
    placement = {"device_map": device_map} if device_map is not None else {}
    source = resolve(name_or_path)
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as err:
        bundled = ", ".join([*BUNDLED, *ZOO])
        raise ModelLoadError(
            f"unknown model {name_or_path!r}: not a bundled model ({bundled}), not a local folder, "
            f"and not loadable from the hub ({type(err).__name__})"
        ) from None
    if config.model_type in MULTIMODAL_TYPES:
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype, **placement)
        tokenizer = AutoProcessor.from_pretrained(source)
    else:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **placement)
        tokenizer = AutoTokenizer.from_pretrained(source)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    model.requires_grad_(False)
    model.minedit_name = name_or_path  # for results files; not used for any architecture decision
    return model, tokenizer
