"""Deferral gates: decide, from a sequence's feature and routing, whether the edited experts answer at all.

A gate remembers something of every edit (``add(feature, code)``) and, for a batch of sequences,
says which ones the original model should answer (``defer(features, codes) -> (B,) bool``). A
:class:`~minedit.moe.mixture.Mixture` defers a sequence when any of its gates does.

:class:`HammingGate` is ELDER's deferral mechanism (Li et al. 2024, Sec. 3.3). After each edit, the
experts its sequence was routed to in every routed layer form a binary code (one bit per expert and
layer, k ones per layer, the layers concatenated), kept in a code memory. At inference,

    defer(x)  iff  min_i  Hamming(code(x), code_i) > threshold,

so an input that routes like no edited input gets the original model (Eq. 5). Codes are stored as
the chosen expert *indices* (N, layers, k) rather than as bit strings: for two k-hot rows the Hamming
distance is ``2 * (k - |overlap|)``, which stays correct when a layer's expert pool grows (a longer
bit string with zeros appended has the same distances).

Gates are ``nn.Module``s: what they remember is in buffers (moved with the model, saved with the
mixture's state) and a gate that learns its threshold or sentinel has parameters. A gate reads the
mixture's feature named ``feature`` (None: the mixture's first one). Registered in :data:`GATES`
(``--set gate=NAME``): ``hamming`` :class:`HammingGate`, ``similarity`` :class:`SimilarityGate`.
"""
from __future__ import annotations

from typing import Optional, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import Registry

GATES: Registry["Gate"] = Registry("gate")


class Gate(Protocol):
    feature: Optional[str]  # which of the mixture's features the gate reads (None: the first)

    def add(self, feature: torch.Tensor, code: torch.Tensor | None) -> None: ...

    def defer(self, features: torch.Tensor, codes: torch.Tensor | None) -> torch.Tensor: ...


@GATES.register("hamming")
class HammingGate(nn.Module):
    """Code memory + threshold; ``threshold`` counts differing bits (one changed expert = 2 bits)."""

    def __init__(self, threshold: int = 0, feature: Optional[str] = None):
        super().__init__()
        self.threshold, self.feature = threshold, feature
        self.register_buffer("codes", torch.zeros(0, 0, 0, dtype=torch.long))  # (N, layers, k)

    def __len__(self) -> int:
        return len(self.codes)

    def add(self, feature: torch.Tensor | None, code: torch.Tensor) -> None:
        """Remember one edit's code, (layers, k) expert indices (the feature is not used)."""
        if code is None:
            raise ValueError("HammingGate needs routing codes: use it with top-k routers, not a dense one")
        code = code.detach().long().to(self.codes.device)
        self.codes = code[None] if len(self.codes) == 0 else torch.cat([self.codes, code[None]])

    def distances(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, N) Hamming distances between query codes (B, layers, k) and the stored ones."""
        q, s = codes.long().to(self.codes.device), self.codes
        if len(s) == 0:
            return torch.zeros(len(q), 0, dtype=torch.long, device=q.device)
        valid = (q >= 0)[:, None, :, :]  # (B, 1, layers, k): -1 pads a layer with a smaller k
        overlap = ((q[:, None, :, :, None] == s[None, :, :, None, :]).any(-1) & valid).sum((-1, -2))  # (B, N)
        bits_per_code = valid.sum((-1, -2))  # (B, 1): ones in each query's code
        return 2 * (bits_per_code - overlap)

    def defer(self, features: torch.Tensor | None, codes: torch.Tensor) -> torch.Tensor:
        """(B,) bool: True where no stored code is within ``threshold`` bits (and always with no codes)."""
        dist = self.distances(codes)
        if dist.shape[1] == 0:
            return torch.ones(len(codes), dtype=torch.bool, device=dist.device)
        return dist.min(-1).values > self.threshold


@GATES.register("similarity")
class SimilarityGate(nn.Module):
    """Defer a sequence whose feature has cosine similarity below ``threshold`` to every edit's feature.

    Not in ELDER: minedit's remedy for code deferral that lets unrelated inputs through once every
    edit has experts of its own (notebook 04). The same test as GRACE's radius (Hartvigsen et al.
    2023, Sec. 3), on a sequence feature and an angle instead of one token and a distance, and the
    shape of LiveEdit's hard filtering (Chen et al. 2024), which keeps an expert only for queries
    similar enough to its edit.
    """

    def __init__(self, threshold: float = 0.85, feature: Optional[str] = None):
        super().__init__()
        self.threshold, self.feature = threshold, feature
        self.register_buffer("keys", torch.zeros(0, 0))  # (N, d) unit-length edit features

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, feature: torch.Tensor, code: torch.Tensor | None = None) -> None:
        key = F.normalize(feature.detach().float().reshape(1, -1), dim=-1).to(self.keys.device)
        self.keys = key if len(self.keys) == 0 else torch.cat([self.keys, key])

    def similarity(self, features: torch.Tensor) -> torch.Tensor:
        """(B,) cosine similarity of each feature to its nearest stored edit feature (-1 with none)."""
        if len(self.keys) == 0:
            return torch.full((len(features),), -1.0, device=features.device)
        return (F.normalize(features.detach().float().to(self.keys.device), dim=-1) @ self.keys.T).max(-1).values

    def defer(self, features: torch.Tensor, codes: torch.Tensor | None = None) -> torch.Tensor:
        return self.similarity(features) < self.threshold
