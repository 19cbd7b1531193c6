"""Continual learning of visual tasks with a growing mixture of experts: LLaVA-CMoE (2025) and its baselines.

- :mod:`.suite`: the task suite on the visual world (generated scenes, task files);
- :mod:`.probe`: Probe-Guided Knowledge Extension (which layers get new experts);
- :mod:`.locator`: the Probabilistic Task Locator (per-task VAEs choosing per-task routers);
- :mod:`.learners`: ``seq-lora``, ``joint``, ``seq-moe-lora``, ``llava-cmoe`` (registry :data:`LEARNERS`);
- :mod:`.runner`: tasks in order, accuracy matrices, Last and BWT; :mod:`.command`: ``python -m minedit continual``.
"""
from .learners import LEARNERS, ContinualConfig, ContinualLearner
from .locator import LocatorConfig, ProbabilisticTaskLocator, TaskRouters, TaskVAE
from .probe import expansion_layers, load_balancing_loss
from .runner import run, summarise
from .suite import DEFAULT_ORDER, TASKS, Task, generated_task, load_task

__all__ = ["LEARNERS", "ContinualConfig", "ContinualLearner", "LocatorConfig", "ProbabilisticTaskLocator",
           "TaskRouters", "TaskVAE", "expansion_layers", "load_balancing_loss", "run", "summarise",
           "DEFAULT_ORDER", "TASKS", "Task", "generated_task", "load_task"]
