"""Mixture-of-experts parts that editors compose; each kind is a protocol with a registry.

- :mod:`.experts`: :class:`LoRAExpert`, :class:`FFNExpert` (LEMoE), :class:`FactorExpert` (LiveEdit).
- :mod:`.layer`: :class:`ExpertLayer` (PEFT-style wrapper, ``base_layer`` kept).
- :mod:`.features`: one vector per sequence (last token, mean, both, the image's tokens).
- :mod:`.routers`: the :class:`Router` protocol, ELDER's :class:`TopKRouter`, an anchored
  :class:`CosineTopKRouter`, LEMoE's :class:`KeyedRouter`, LiveEdit's :class:`DenseRouter`, the guided loss.
- :mod:`.filtering`: LiveEdit's :class:`VisualFilterRouter` (visual hard filter with a sentinel, then
  softmax x sigmoid soft routing on the text).
- :mod:`.gates`: ELDER's :class:`HammingGate` (deferral by routing codes), :class:`SimilarityGate`.
- :mod:`.allocation`: which experts an edit gets (shared preset, fresh experts, one per batch).
- :mod:`.mixture`: :class:`Mixture` owns their lifecycle and state.

A new idea is one class registered by name, e.g. ``@register_router("mine")``, and is then usable as
``--set router=mine`` with any mixture editor.
"""
from .allocation import POLICIES, Allocation, AllocationPolicy, FreshExperts, OnePerBatch, SharedPreset
from .experts import EXPERTS, ExpertSpec, FactorExpert, FFNExpert, LoRAExpert, expert_from_state
from .features import (FEATURES, ImageTextHidden, LastTokenHidden, MeanAndLastHidden, MeanPooledHidden, SequenceFeature, TextHidden, VisionFeature,
                       sequence_features)
from .filtering import VisualFilterRouter
from .gates import GATES, Gate, HammingGate, SimilarityGate
from .layer import ExpertLayer, MoELoRALinear, RoutingState
from .mixture import Mixture
from .routers import (ROUTERS, CosineTopKRouter, DenseRouter, KeyedRouter, Router, Routing, TopKRouter, guided_loss,
                      topk_routing)

register_expert = EXPERTS.register
register_feature = FEATURES.register
register_router = ROUTERS.register
register_gate = GATES.register
register_policy = POLICIES.register

__all__ = ["Allocation", "AllocationPolicy", "CosineTopKRouter", "DenseRouter", "EXPERTS", "ExpertLayer", "ExpertSpec",
           "FEATURES", "FFNExpert", "FactorExpert", "FreshExperts", "GATES", "Gate", "HammingGate", "ImageTextHidden", "KeyedRouter", "TextHidden",
           "LastTokenHidden", "LoRAExpert", "MeanAndLastHidden", "MeanPooledHidden", "Mixture", "MoELoRALinear",
           "OnePerBatch", "POLICIES", "ROUTERS", "Router", "Routing", "RoutingState", "SequenceFeature", "SharedPreset",
           "SimilarityGate", "TopKRouter", "VisionFeature", "VisualFilterRouter", "expert_from_state", "guided_loss", "register_expert",
           "register_feature", "register_gate", "register_policy", "register_router", "sequence_features",
           "topk_routing"]
