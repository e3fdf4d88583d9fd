"""ablate: does combining LoRA with another PEFT method pay off? Settled with evidence."""

from __future__ import annotations

__version__ = "0.1.0"


def load(directory, base):  # noqa: ANN001, ANN201 - kept import-light: no torch until called
    """Re-attach the components of an ``ablate export`` directory to ``base`` (a transformers model);
    returns the attached stack (``stack.detach()`` removes them). See ``ablate.export.load``."""
    from ablate.export import load as _load

    return _load(directory, base)
