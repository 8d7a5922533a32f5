"""LoRA and QLoRA: train small low-rank adapters (PEFT) instead of every weight.

SFTTrainer wraps the model with the adapters described by lora_config(); the saved folder holds the
model with the adapter merged in (merge_adapter) and the adapter alone in adapter/.
"""

from sft.errors import UserError


def lora_config(settings, model):
    """PEFT's LoRA settings, or None without --lora/--qlora. By default adapters go on every linear layer
    ("all-linear": GPT-2's fused c_attn/c_proj/c_fc, the q/k/v/o and MLP projections of Llama, Gemma,
    GPT-NeoX), which PEFT finds itself for any architecture; named layers are checked against the model."""
    if not settings.uses_lora:
        return None
    from peft import LoraConfig

    targets = settings.lora_target_modules.strip()
    if targets != "all-linear":
        targets, layers = [name.strip() for name in targets.split(",") if name.strip()], linear_layer_names(model)
        if unknown := sorted(set(targets) - layers):
            raise UserError(f"--lora-target-modules {', '.join(unknown)}: no such linear layer in "
                            f"{model.name_or_path}; its linear layers are {', '.join(sorted(layers))} "
                            "(or use all-linear)")
    return LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")


def linear_layer_names(model) -> set[str]:
    """The short names of the layers LoRA can adapt: linear ones, GPT-2's Conv1D and 4-bit ones included."""
    import torch
    from transformers.pytorch_utils import Conv1D

    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
            if isinstance(module, (torch.nn.Linear, Conv1D)) or type(module).__name__ == "Linear4bit"}


def lora_summary(model, settings) -> dict | None:
    """What the adapters are, for the log, the metadata and the model card; None without LoRA."""
    if not settings.uses_lora:
        return None
    targets = sorted({name.split(".")[-1] for name in model.peft_config["default"].target_modules})
    return {"rank": settings.lora_rank, "alpha": settings.lora_alpha, "dropout": settings.lora_dropout,
            "target_modules": targets,
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "learning_rate": settings.learning_rate,  # LORA_LEARNING_RATE unless --learning-rate was given
            "learning_rate_from": "LORA_LEARNING_RATE" if settings.learning_rate == settings.lora_learning_rate
                                  else "--learning-rate",
            "base_weights": "4-bit NF4 while training (QLoRA, bitsandbytes)" if settings.qlora else "as loaded",
            "saved": ("merged into the unquantized base" if settings.qlora else "merged into the weights")
                     + " saved in this folder; the adapter alone in adapter/"}


def base_parameters(model) -> int:
    """The base model's parameter count, without LoRA's adapters (4-bit weights count once each)."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    adapters = sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)
    return model.num_parameters() - adapters


def merge_adapter(peft_model, full_precision_base=None):
    """The model with its LoRA adapter merged into the weights.

    After QLoRA the base in memory is 4-bit, and merging there would round every merged weight to 4 bits:
    the adapter is merged into `full_precision_base`, a freshly loaded copy of the base, instead.
    """
    if full_precision_base is None:
        return peft_model.merge_and_unload()
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    fresh = get_peft_model(full_precision_base, peft_model.peft_config["default"])
    set_peft_model_state_dict(fresh, get_peft_model_state_dict(peft_model))
    return fresh.merge_and_unload()
