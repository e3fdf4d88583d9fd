"""Take the winner away: one arm's trained components out of a finished study.

    ablate export study=NAME [arm=ARM] [seed=S] out=DIR [merge=true] [overwrite=true]

The arm defaults to the winner (the primary-family arm that beats the baseline by
the most, else the baseline itself) and the seed to the replicate with the best
validation objective (the verdict reads test; choosing a seed never does). The
weights are the ``components`` artifact of that seed's MLflow run, re-attached to
the base the run recorded, and the export is checked against them before it is
moved into place: the logits of every format written must equal ablate's on the
same validation items (``check`` in ``ablate.json`` and the model card).

Every export holds ``components.safetensors`` + ``components.json`` (ablate's own
layout, re-attached by ``ablate.load(DIR, base)``), ``ablate.json`` (the resolved
run config, the choice and the check), the tokenizer and a model card
(``README.md``). A LoRA-only arm adds a standard PEFT adapter directory
(``adapter_config.json`` + ``adapter_model.safetensors``); with ``merge=true`` the
directory holds the merged full model instead (``AutoModelForCausalLM``)."""

from __future__ import annotations

from ablate.export.card import model_card
from ablate.export.choose import Choice, choose
from ablate.export.load import EXPORT_FILE, FORMAT, load
from ablate.export.write import Exported, export

__all__ = ["EXPORT_FILE", "FORMAT", "Choice", "Exported", "choose", "export", "load", "model_card"]
