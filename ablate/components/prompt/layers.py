"""Prompt tuning (Lester et al. 2021): N trainable virtual tokens before the input embeddings.

Written here rather than through peft because peft's prompt tuning needs its
PeftModel wrapper. A forward pre-hook on the model turns ``input_ids`` into
``inputs_embeds`` with the soft prompt in front and extends the attention
mask (and labels, if given); a forward hook drops the N virtual positions
from the logits again, so everything downstream sees logits aligned with its
own ``input_ids``.
"""

from __future__ import annotations

import torch
from torch import nn

from ablate.components._arch import Dims, dims
from ablate.components.base import Attached, trainable_fp32
from ablate.components.prompt import PromptConfig

MODULE_NAME = "ablate_prompt"


class SoftPrompt(nn.Module):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)


def expected_params(d: Dims, cfg: PromptConfig) -> int:
    return cfg.length * d.hidden


def apply(model: nn.Module, cfg: PromptConfig) -> Attached:
    if hasattr(model, MODULE_NAME):
        raise RuntimeError("a soft prompt is already attached; detach it first")
    embed = model.get_input_embeddings()
    hidden = dims(model.config).hidden
    if cfg.init == "vocab":
        ids = torch.randint(0, embed.weight.shape[0], (cfg.length,))
        weight = embed.weight.detach()[ids.to(embed.weight.device)].float().cpu().clone()
    else:
        weight = torch.randn(cfg.length, hidden) * cfg.init_std
    prompt = trainable_fp32(SoftPrompt(weight), model)
    setattr(model, MODULE_NAME, prompt)
    state = {"enabled": True, "length": 0}

    def pre_hook(module, args, kwargs):
        if not state["enabled"]:
            return None
        input_ids = kwargs.pop("input_ids", None)
        if input_ids is None and args:
            input_ids, args = args[0], args[1:]
        if input_ids is None or kwargs.get("position_ids") is not None:
            raise RuntimeError("prompt tuning expects input_ids and no position_ids")
        state["length"] = input_ids.shape[1]
        embeds = embed(input_ids)
        batch = embeds.shape[0]
        soft = prompt.weight.to(embeds.dtype).unsqueeze(0).expand(batch, -1, -1)
        kwargs["inputs_embeds"] = torch.cat([soft, embeds], dim=1)
        mask = kwargs.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(input_ids)
        ones = torch.ones(batch, cfg.length, dtype=mask.dtype, device=mask.device)
        kwargs["attention_mask"] = torch.cat([ones, mask], dim=1)
        labels = kwargs.get("labels")
        if labels is not None:
            ignore = torch.full((batch, cfg.length), -100, dtype=labels.dtype, device=labels.device)
            kwargs["labels"] = torch.cat([ignore, labels], dim=1)
        return args, kwargs

    def post_hook(module, args, kwargs, output):
        # Drop the virtual positions; with logits_to_keep the logits may already be shorter.
        logits = getattr(output, "logits", None)
        if state["enabled"] and logits is not None and logits.shape[1] > state["length"]:
            output["logits"] = logits[:, -state["length"] :]
        return output

    handles = [
        model.register_forward_pre_hook(pre_hook, with_kwargs=True),
        model.register_forward_hook(post_hook, with_kwargs=True),
    ]

    def detach() -> None:
        for h in handles:
            h.remove()
        delattr(model, MODULE_NAME)

    return Attached(
        "prompt",
        cfg,
        model,
        owns=lambda n: n.startswith(MODULE_NAME + "."),
        set_enabled=lambda on: state.update(enabled=on),
        detach=detach,
    )
