"""LiveEdit's routing: a visual hard filter, then textual soft routing among the experts that survive it.

Chen et al. 2024 (LiveEdit, Sec. 3.3). Every expert is stored with two routing keys, read from its
edit's prompt below the layer the experts sit on (:class:`~minedit.moe.features.ImageTextHidden`: the
mean of the image's tokens and the mean of the text's), each centred (``mu``: the training edits' mean
feature) and sent through a learned projection, ``phi = P_v (x_image - mu_v)``, ``psi = P_t (x_text - mu_t)``:

1. **Hard filtering** on the image: expert ``e`` stays a candidate for a query only if the query's
   projected image feature is more similar to the edit's than to a learned *vision sentinel* ``z``,

       keep_e = cos(phi_q, phi_e) > cos(phi_q, z),

   so the sentinel is a learned "no match" prototype and the threshold adapts to each query.
2. **Soft routing** on the text, among the survivors ``K``: ``s_e = tau * cos(psi_q, psi_e) + b`` and

       c_e = softmax_{K}(s)_e * sigmoid(s_e)   (e in K; 0 otherwise),

   the softmax shares the weight among survivors, the sigmoid lets all of them be small at once.

A query without an image keeps no expert: every edit of a VLM editing benchmark is about an image, so
a text-only question (T-Loc) gets the unedited model. This is minedit's reading; the seed summary
does not say how the paper handles image-free queries (LiveEdit's T-Loc is near 100% either way).

minedit uses one feature extractor (projection) for edits and queries alike, where the paper has two
(the edit's and the query's); the edit's keys are read from its prompt, as a query's are. The
projections, the sentinel, ``tau`` and ``b`` are trained offline with the expert generator
(:mod:`minedit.zoo.build_liveedit`) and frozen while editing; the keys are buffers, one row per expert.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .routers import ROUTERS, Routing


@ROUTERS.register("visual-filter")
class VisualFilterRouter(nn.Module):
    """Hard filter on the image half of a (B, 2d) ``image+text`` feature, softmax x sigmoid on the text half."""

    def __init__(self, d: int, width: int = 128, tau: float = 10.0, generator: torch.Generator | None = None):
        """``d``: the feature's width (both halves); ``width``: the projections'; ``tau``: the text scale at first."""
        super().__init__()
        self.d = d // 2  # each half of the image+text feature
        init = lambda: nn.Parameter(torch.randn(width, self.d, generator=generator) / self.d ** 0.5)  # noqa: E731
        self.proj_image, self.proj_text = init(), init()  # (w, d) each: phi = P_v x_image, psi = P_t x_text
        self.sentinel = nn.Parameter(torch.randn(width, generator=generator))  # (w,) the vision sentinel z
        self.log_tau = nn.Parameter(torch.tensor(float(tau)).log())  # the text scores' scale, learned as a log
        self.bias = nn.Parameter(torch.tensor(0.0))  # b: sigmoid(s) can be small for a survivor
        # subtracted before projecting: every image's (and every question's) states share a large common
        # direction, so uncentred cosines are all near 1; the build sets it to its training edits' mean
        self.register_buffer("centre", torch.zeros(d))  # (2d,)
        self.register_buffer("keys_image", torch.zeros(0, width))  # (E, w) unit rows
        self.register_buffer("keys_text", torch.zeros(0, width))  # (E, w) unit rows

    @property
    def n_experts(self) -> int:
        return self.keys_image.shape[0]

    def grow(self, n: int, generator: torch.Generator | None = None) -> None:
        """``n`` new experts with empty keys (they match nothing until :meth:`anchor` sets them)."""
        pad = self.keys_image.new_zeros(n, self.keys_image.shape[1])
        self.keys_image = torch.cat([self.keys_image, pad])
        self.keys_text = torch.cat([self.keys_text, pad.clone()])

    def project(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Unit ``phi`` (B, w), unit ``psi`` (B, w) and whether each row has an image (B,)."""
        features = features.to(self.proj_image.dtype)
        has_image = features[..., : self.d].abs().sum(-1) > 0
        image, text = (features - self.centre).split(self.d, dim=-1)
        return (F.normalize(image @ self.proj_image.T, dim=-1), F.normalize(text @ self.proj_text.T, dim=-1),
                has_image)

    def sentinel_similarity(self, phi: torch.Tensor) -> torch.Tensor:
        """(B, 1) ``cos(phi, z)`` of unit ``phi`` (B, w): the threshold each query's experts must beat."""
        return phi @ F.normalize(self.sentinel, dim=0)[:, None]

    @torch.no_grad()
    def anchor(self, experts: torch.Tensor, features: torch.Tensor) -> None:
        """Set experts' keys (E_new,) from their edits' features (E_new, 2d)."""
        phi, psi, _ = self.project(features)
        self.keys_image[experts] = phi.to(self.keys_image)
        self.keys_text[experts] = psi.to(self.keys_text)

    def scores(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, E) image similarities, (B, 1) similarity to the sentinel, (B, E) text scores ``s``."""
        phi, psi, has_image = self.project(features)
        visual = phi @ self.keys_image.T  # (B, E)
        sentinel = self.sentinel_similarity(phi)  # (B, 1)
        sentinel = torch.where(has_image[:, None], sentinel, torch.full_like(sentinel, float("inf")))
        return visual, sentinel, self.log_tau.exp() * (psi @ self.keys_text.T) + self.bias

    def forward(self, features: torch.Tensor) -> Routing:
        visual, sentinel, s = self.scores(features)
        keep = visual > sentinel  # (B, E) the hard filter
        probs = s.masked_fill(~keep, torch.finfo(s.dtype).min).softmax(-1) * keep  # (B, E) softmax over survivors
        return Routing(probs * torch.sigmoid(s), ~keep.any(-1), probs, None)
