"""``ablate.load``: re-attach an export's components to a base (the reader of the export format)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

EXPORT_FILE = "ablate.json"
FORMAT = "ablate-export/1"


def load(directory: str | Path, base: Any) -> Any:
    """Re-attach an export's components to ``base`` (a model, or ablate's ``Base``); returns the
    ``Stack`` (``stack.detach()`` removes them again). The base must have the recorded architecture."""
    from ablate.components import stack as components
    from ablate.models import Base

    directory = Path(directory)
    model = base.model if isinstance(base, Base) else base  # (a transformers model has .model too)
    meta_path = directory / EXPORT_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if meta.get("merged"):
        raise ValueError(
            f"{directory} holds a merged model: load it with AutoModelForCausalLM.from_pretrained"
        )
    if not (directory / "components.json").exists():
        raise FileNotFoundError(f"{directory}: no components.json (not an ablate export)")
    for key, want in (meta.get("base", {}).get("arch") or {}).items():
        have = getattr(model.config, key, None)
        if want is not None and have != want:
            raise ValueError(
                f"{directory} was trained on a base with {key}={want}; this base has {key}={have}"
            )
    training = model.training
    stack = components.load(model, directory, meta.get("max_length"))
    model.train(training)  # new modules start in training mode (dropout on): follow the base's mode
    return stack
