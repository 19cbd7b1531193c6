"""Mixture-of-LoRA parts that editors compose: experts, sequence features, routers, gates, the mixture.

- :mod:`.lora`: :class:`LoRAExpert`, :class:`MoELoRALinear` (PEFT-style wrapper, ``base_layer`` kept).
- :mod:`.features`: one vector per sequence (:class:`LastTokenHidden`, :class:`MeanPooledHidden`,
  :class:`MeanAndLastHidden`).
- :mod:`.routers`: the :class:`Router` protocol, ELDER's :class:`TopKRouter`, an anchored
  :class:`CosineTopKRouter`, the guided loss.
- :mod:`.gates`: ELDER's :class:`HammingGate` (deferral by routing codes), :class:`SimilarityGate`.
- :mod:`.mixture`: :class:`Mixture` wires them into a model.
"""
from .features import LastTokenHidden, MeanAndLastHidden, MeanPooledHidden, SequenceFeature
from .gates import Gate, HammingGate, SimilarityGate
from .lora import LoRAExpert, MoELoRALinear, RoutingState, linear_dims
from .mixture import Mixture
from .routers import CosineTopKRouter, Router, Routing, TopKRouter, guided_loss

__all__ = ["CosineTopKRouter", "Gate", "HammingGate", "LastTokenHidden", "LoRAExpert", "MeanAndLastHidden",
           "MeanPooledHidden", "Mixture", "MoELoRALinear", "Router", "Routing", "RoutingState", "SequenceFeature",
           "SimilarityGate", "TopKRouter", "guided_loss", "linear_dims"]
