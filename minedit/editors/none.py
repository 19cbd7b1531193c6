"""The ``none`` editor: changes nothing. Running it measures the unedited baseline (loc = 1.0)."""
from __future__ import annotations

from .base import Editor, EditorConfig


class NoneEditor(Editor):
    """Accepts every edit and leaves the model exactly as it was."""

    name = "none"
    config_class = EditorConfig

    def _edit_one(self, request):
        return {}
