"""``tiny-llava``: a real ``LlavaForConditionalGeneration`` whose language model is the bundled SmolLM2.

What ships in ``data_samples/tiny_llava/`` (a few MB, built by ``python -m minedit.zoo build
tiny-llava``, see :mod:`minedit.zoo.build_tiny_llava`):

- the weights of a small CLIP vision transformer (64x64 images, 16x16 patches: 16 image tokens)
  and of LLaVA's two-layer projector into SmolLM2's 576-d embedding space;
- a LoRA on the language model's attention (LLaVA's second stage tunes the language model to answer
  questions about images; SmolLM2 alone names a described colour only a quarter of the time);
- ``tiny_llava.json``: the configuration and what the build measured.

:func:`load` takes SmolLM2's weights from the model cache (never from git), adds the vision parts,
merges the LoRA into the attention weights (so editors see plain ``nn.Linear`` layers) and returns
the model with a ``LlavaProcessor``. :func:`export` writes the result as an ordinary llava-hf folder,
which ``load_model(folder)`` reads through the same code as any LLaVA checkpoint.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..bundled import ModelLoadError, resolve
from ..fsio import atomic_folder
from ..paths import samples_dir
from ..vision import num_image_tokens as _image_tokens

log = logging.getLogger(__name__)
LANGUAGE_MODEL = "smollm2-135m"
# SmolLM2's vocabulary has no <image> token; an unused special token of it holds the image's place
# (LLaVA replaces these positions by image features before the language model sees them).
IMAGE_TOKEN = "<empty_output>"
CHAT_TEMPLATE = (
    "{% for message in messages %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}" + IMAGE_TOKEN + "\n"
    "{% elif item['type'] == 'text' %}Question: {{ item['text'] }}\n{% endif %}"
    "{% endfor %}{% endfor %}{% if add_generation_prompt %}Answer:{% endif %}"
)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def artifact_dir() -> Path:
    """The shipped artifact: ``tiny_llava/`` in :func:`minedit.paths.samples_dir`."""
    return samples_dir() / "tiny_llava"


def __getattr__(name: str):
    if name == "ARTIFACT":  # the older constant, looked up when asked for (``$MINEDIT_DATA`` may move it)
        return artifact_dir()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class TinyLlavaSpec:
    """Shape of the vision side and of the language-model LoRA (changing it needs a rebuild)."""

    image_size: int = 64
    patch_size: int = 16  # (64 / 16)^2 = 16 image tokens per image
    vision_hidden: int = 192
    vision_layers: int = 4
    vision_heads: int = 4
    vision_mlp: int = 768
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")

    @property
    def lora_scaling(self) -> float:
        return self.lora_alpha / self.lora_rank


def llava_config(text_config, spec: TinyLlavaSpec = TinyLlavaSpec(), image_token_id: int = 16):
    """A ``LlavaConfig`` around ``text_config`` with the vision tower of ``spec``."""
    from transformers import CLIPVisionConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=spec.vision_hidden, intermediate_size=spec.vision_mlp, num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads, image_size=spec.image_size, patch_size=spec.patch_size,
        projection_dim=spec.vision_hidden,
    )
    return LlavaConfig(
        vision_config=vision, text_config=text_config, image_token_id=image_token_id,
        vision_feature_layer=-1, vision_feature_select_strategy="default", image_seq_length=num_image_tokens(spec),
        tie_word_embeddings=getattr(text_config, "tie_word_embeddings", True),
    )


def num_image_tokens(spec: TinyLlavaSpec = TinyLlavaSpec()) -> int:
    """Image tokens per image (16 for 64x64 images in 16x16 patches)."""
    return _image_tokens(spec)


def make_processor(tokenizer, spec: TinyLlavaSpec = TinyLlavaSpec()):
    """LLaVA's processor: CLIP-normalised 64x64 images, SmolLM2's tokenizer, the Question/Answer template."""
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    images = CLIPImageProcessorPil(
        size={"shortest_edge": spec.image_size}, crop_size={"height": spec.image_size, "width": spec.image_size},
        image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD),
    )
    return LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=spec.patch_size,
                          vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE,
                          image_token=IMAGE_TOKEN, num_additional_image_tokens=1)


def assemble(language_model, vision_state: dict[str, torch.Tensor], spec: TinyLlavaSpec = TinyLlavaSpec(),
             dtype: torch.dtype = torch.float32):
    """A ``LlavaForConditionalGeneration`` from a causal LM and the vision tower + projector weights.

    ``vision_state`` holds ``model.vision_tower.*`` and ``model.multi_modal_projector.*`` tensors.
    The tensors are copied in, so ``language_model`` stays as it was.
    """
    from transformers import LlavaForConditionalGeneration

    config = llava_config(language_model.config, spec)
    model = LlavaForConditionalGeneration(config)  # buffers (rotary, position ids) are built here
    state = {f"model.language_model.{k[len('model.'):]}": v for k, v in language_model.state_dict().items()
             if k.startswith("model.")}
    state["lm_head.weight"] = language_model.get_output_embeddings().weight
    state.update(vision_state)
    model.load_state_dict(state, strict=True)
    model.to(dtype)
    model.eval()
    model.requires_grad_(False)
    return model


def merge_lora(model, lora_state: dict[str, torch.Tensor], scaling: float) -> None:
    """``W += scaling * B @ A`` for each ``<module>.lora_A`` / ``<module>.lora_B`` pair in ``lora_state``."""
    modules = dict(model.named_modules())
    for key, a in lora_state.items():
        if not key.endswith(".lora_A"):
            continue
        name = key[: -len(".lora_A")]
        b = lora_state[f"{name}.lora_B"]
        weight = modules[name].weight
        with torch.no_grad():
            weight += scaling * (b.to(weight.dtype) @ a.to(weight.dtype))


def load(dtype: torch.dtype = torch.float32, artifact: Path | None = None):
    """``(model, processor)`` of tiny-llava, offline: SmolLM2 from the cache plus the shipped artifact."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    artifact = Path(artifact) if artifact is not None else artifact_dir()
    meta_path, weights = artifact / "tiny_llava.json", artifact / "model.safetensors"
    if not meta_path.is_file() or not weights.is_file():
        raise ModelLoadError(f"tiny-llava is not built: {artifact} lacks tiny_llava.json or model.safetensors; "
                             "run `python -m minedit.zoo build tiny-llava`")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    spec = TinyLlavaSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["spec"].items()})
    lm_folder = resolve(LANGUAGE_MODEL)
    language_model = AutoModelForCausalLM.from_pretrained(lm_folder, dtype=torch.float32)
    tensors = load_file(str(weights))
    vision = {k: v for k, v in tensors.items() if k.startswith("model.") and ".lora_" not in k}
    model = assemble(language_model, vision, spec)
    merge_lora(model, {k: v for k, v in tensors.items() if ".lora_" in k}, spec.lora_scaling)
    model.to(dtype)
    processor = make_processor(AutoTokenizer.from_pretrained(lm_folder), spec)
    model.minedit_name = "tiny-llava"
    return model, processor


def save_artifact(folder: Path, tensors: dict[str, torch.Tensor], spec: TinyLlavaSpec, report: dict) -> None:
    """Write ``model.safetensors`` and ``tiny_llava.json`` into ``folder`` atomically (all or nothing)."""
    from safetensors.torch import save_file

    with atomic_folder(folder) as tmp:
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp / "model.safetensors"))
        meta = {"language_model": LANGUAGE_MODEL, "spec": asdict(spec), **report}
        (tmp / "tiny_llava.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")


def export(folder: Path, dtype: torch.dtype = torch.float32) -> Path:
    """Save tiny-llava as a llava-hf folder (``config.json``, safetensors, processor files), atomically."""
    model, processor = load(dtype)
    with atomic_folder(folder) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return Path(folder)
