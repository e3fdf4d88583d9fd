"""ablate: does combining LoRA with another PEFT method pay off? Settled with evidence."""

from __future__ import annotations

__version__ = "0.1.0"
