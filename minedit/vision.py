"""Images in prompts: what the text-only machinery needs to score and edit a vision-language model.

A multimodal model comes with a *processor* (image processor + tokenizer + chat template) where a
text model has a tokenizer. minedit keeps one code path for both:

- :func:`text_tokenizer` gives the tokenizer inside a processor (or the tokenizer itself);
- :func:`render_prompt` renders a question about one image with the model's own chat template;
  :func:`expand_ids` tokenises it with the image placeholder expanded to one token per image patch
  (as LLaVA's processor does), and :func:`pixel_values` prepares the image.

Pixel values are cached per image file (an edit benchmark asks about the same image many times).
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from .errors import UserError

_CACHE_SIZE = 1024
_pixels: "OrderedDict[tuple[int, str], torch.Tensor]" = OrderedDict()


class ImageError(UserError, ValueError):
    """An image that cannot be read: the message names the file."""


def is_multimodal(tokenizer) -> bool:
    """True for a processor that handles images (it has an image processor)."""
    return getattr(tokenizer, "image_processor", None) is not None


def text_tokenizer(tokenizer):
    """The text tokenizer of a processor, or ``tokenizer`` itself."""
    return getattr(tokenizer, "tokenizer", tokenizer)


def open_image(image: "str | Path | Image.Image") -> Image.Image:
    """An RGB PIL image from a path or an image."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    path = Path(image)
    if not path.is_file():
        raise ImageError(f"{path}: image file not found")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise ImageError(f"{path}: not a readable image ({err})") from None


def pixel_values(processor, image: "str | Path | Image.Image") -> torch.Tensor:
    """(1, 3, H, W) pixel values of ``image`` as the processor prepares them (cached per file path)."""
    key = (id(processor), str(image)) if not isinstance(image, Image.Image) else None
    if key is not None and key in _pixels:
        _pixels.move_to_end(key)
        return _pixels[key]
    values = processor.image_processor(images=open_image(image), return_tensors="pt")["pixel_values"]
    if key is not None:
        _pixels[key] = values
        if len(_pixels) > _CACHE_SIZE:
            _pixels.popitem(last=False)
    return values


def patch_tokens(image_size: "int | tuple[int, int]", patch_size: int) -> int:
    """Patches (image tokens before any CLS token) of an image cut into ``patch_size`` squares."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    return (height // patch_size) * (width // patch_size)


def num_image_tokens(source) -> int:
    """Image tokens per image, ``(image_size // patch_size) ** 2``, from a vision config (or any object with
    ``image_size`` and ``patch_size``) or from a LLaVA processor (its image processor's crop size)."""
    size = getattr(source, "image_size", None)
    if size is None:
        crop = source.image_processor.crop_size
        size = (crop["height"], crop["width"])
    return patch_tokens(size, source.patch_size)


def render_prompt(processor, question: str) -> str:
    """``question`` about one image, rendered by the processor's chat template (image placeholder included)."""
    if not getattr(processor, "chat_template", None):
        return f"{processor.image_token}\n{question}"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def expand_ids(processor, text: str, pixels: torch.Tensor) -> list[int]:
    """Token ids of ``text`` with each image placeholder expanded to the image's number of tokens."""
    n = patch_tokens(tuple(pixels.shape[-2:]), processor.patch_size) + processor.num_additional_image_tokens
    if processor.vision_feature_select_strategy == "default":
        n -= 1
    expanded = text.replace(processor.image_token, processor.image_token * n)
    return processor.tokenizer(expanded).input_ids

