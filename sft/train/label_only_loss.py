"""The loss with the language-model head applied only where a label is, a chunk of rows at a time.

The head turns every position into scores over the whole vocabulary (50k words for GPT-2, 262k for
Gemma), but only the positions followed by a trained token are needed for the loss. TRL's own head
(trl.trainer.utils.add_fused_lm_head) does the same with Triton on CUDA; off Triton it scores every
position and computes each chunk's logits twice. On a 2-core CPU this one made a step 1.67x faster
for GPT-2 on long chats and 1.57x for Gemma 3 on short ones (BENCHMARKS.md, "without label-only head"),
with the same loss and gradients.
"""

import torch

from sft.data.masking import IGNORE_INDEX

# Logits are scored this many at a time (2**25 floats = 128 MB): memory stays flat for any number of
# labelled tokens and any vocabulary.
CHUNK_LOGITS = 2**25

_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                     "logits_scaling")


def causal_lm(model):
    """The transformers model itself, also when PEFT has wrapped it with LoRA adapters."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def label_only_logits_possible(model) -> bool:
    """Whether the plain head (hidden states x output embeddings) gives the model's logits: no softcap or scale."""
    text_config = model.config.get_text_config()
    return (model.get_output_embeddings() is not None
            and all(getattr(text_config, name, None) in (None, 1.0) for name in _LOGIT_TRANSFORMS))


def labelled_tokens_loss(model, inputs: dict):
    """(summed cross-entropy, summed entropy, correct argmax predictions, labelled positions) of one batch."""
    targets = inputs["labels"][:, 1:]
    mask = targets != IGNORE_INDEX  # position t predicts token t+1
    backbone_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    hidden = model.base_model(**backbone_inputs, use_cache=False).last_hidden_state[:, :-1]
    loss_sum, entropy, correct = LabelledTokensLoss.apply(
        hidden[mask], model.get_output_embeddings().weight, targets[mask], torch.is_grad_enabled())
    return loss_sum, entropy, correct, mask.sum()


class LabelledTokensLoss(torch.autograd.Function):
    """Cross-entropy summed over the labelled positions only, with the output head applied chunk by chunk.

    Forward scores a chunk of rows (hidden states x output embeddings), takes its log-softmax, and at
    once works out the chunk's gradients (softmax minus one-hot, times the head or the hidden states),
    so no chunk's logits outlive it; backward only scales those gradients. Same three matrix
    multiplies as autograd would do, a fraction of the memory. Also returns the summed entropy and the
    number of correct argmax predictions, the metrics SFTTrainer logs.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, with_gradients: bool):
        rows_per_chunk = max(1, CHUNK_LOGITS // weight.shape[0])
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        entropy, correct = torch.zeros_like(loss), torch.zeros_like(loss)
        # Only what backward will need: none in evaluation, no head gradient when it is frozen (LoRA).
        grad_hidden = torch.empty_like(hidden) if with_gradients and ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight) if with_gradients and ctx.needs_input_grad[1] else None
        for start in range(0, hidden.shape[0], rows_per_chunk):
            rows, wanted = hidden[start:start + rows_per_chunk], targets[start:start + rows_per_chunk]
            log_probs = torch.log_softmax((rows @ weight.T).float(), dim=-1)
            picked = torch.arange(len(wanted), device=wanted.device)
            loss -= log_probs[picked, wanted].sum()
            probs = log_probs.exp()
            entropy -= (probs * log_probs).sum()
            correct += (log_probs.argmax(-1) == wanted).sum()
            probs[picked, wanted] -= 1  # d(-log p[target]) / d(logits)
            probs = probs.to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[start:start + rows_per_chunk] = probs @ weight
            if grad_weight is not None:
                grad_weight.addmm_(probs.T, rows)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.mark_non_differentiable(entropy, correct)
        return loss, entropy, correct

    @staticmethod
    def backward(ctx, grad_loss, _grad_entropy, _grad_correct):
        grad_hidden, grad_weight = ctx.saved_tensors
        return (grad_hidden * grad_loss if grad_hidden is not None else None,
                grad_weight * grad_loss if grad_weight is not None else None, None, None)
