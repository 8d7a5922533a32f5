"""The loss with the language-model head applied only where a label is, a chunk of rows at a time.

The head turns every position into scores over the whole vocabulary (50k words for GPT-2, 262k for
Gemma), but only the positions followed by a trained token are needed for the loss. TRL's own head
(trl.trainer.utils.add_fused_lm_head) does the same with Triton on CUDA; off Triton it scores every
position and computes each chunk's logits twice. On a 2-core CPU this one made a step 1.67x faster
for GPT-2 on long chats and 1.57x for Gemma 3 on short ones (BENCHMARKS.md, "without label-only head"),
with the same loss and gradients.

DPO asks for something else: each answer token's log-probability (model(..., labels=..., fused_lm_head=True),
which TRL adds). `add_label_only_head` gives it the same way, for the reference model and for a policy whose
head is frozen (--freeze-embeddings, LoRA); see LabelLogProbs. A DPO step of 4 pairs on Gemma 3 took 60 s
instead of 69 (the reference alone), and 23 s with the embedding frozen (BENCHMARKS.md, "DPO on a CPU").
"""

import functools

import torch
from trl.trainer.utils import FusedCausalLMOutput

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


def scored_chunks(hidden, weight, targets):
    """The rows scored against the head a chunk at a time, so that one chunk's logits live at once: for each,
    (its slice of the rows, the rows, their targets, their row numbers, the fp32 logits, their log-softmax)."""
    rows_per_chunk = max(1, CHUNK_LOGITS // weight.shape[0])
    for start in range(0, hidden.shape[0], rows_per_chunk):
        chunk = slice(start, start + rows_per_chunk)
        rows, wanted = hidden[chunk], targets[chunk]
        logits = (rows @ weight.T).float()
        yield chunk, rows, wanted, torch.arange(len(wanted), device=wanted.device), logits, torch.log_softmax(logits, -1)


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
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        entropy, correct = torch.zeros_like(loss), torch.zeros_like(loss)
        # Only what backward will need: none in evaluation, no head gradient when it is frozen (LoRA).
        grad_hidden = torch.empty_like(hidden) if with_gradients and ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight) if with_gradients and ctx.needs_input_grad[1] else None
        for chunk, rows, wanted, picked, logits, log_probs in scored_chunks(hidden, weight, targets):
            loss -= log_probs[picked, wanted].sum()
            probs = log_probs.exp()
            entropy -= (probs * log_probs).sum()
            correct += (logits.argmax(-1) == wanted).sum()
            probs[picked, wanted] -= 1  # d(-log p[target]) / d(logits)
            probs = probs.to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[chunk] = probs @ weight
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


class LabelLogProbs(torch.autograd.Function):
    """Each labelled position's log-probability, the output head applied chunk by chunk, for a frozen head.

    The head needs no gradient, so forward works out, for each row, the gradient of its log-probability
    with respect to the hidden state (one-hot minus softmax, times the head), and backward only scales
    each row by its own upstream gradient: two multiplies by the head per row, where recomputing the
    logits in backward takes three. Also TRL's per-token metrics: entropy, mean logit, label on top.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, with_gradients: bool):
        log_prob, entropy, mean_logit = (torch.empty(len(targets), dtype=torch.float32, device=hidden.device)
                                         for _ in range(3))
        on_top = torch.empty(len(targets), dtype=torch.bool, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if with_gradients and ctx.needs_input_grad[0] else None
        for chunk, _rows, wanted, picked, logits, log_probs in scored_chunks(hidden, weight, targets):
            log_prob[chunk] = log_probs[picked, wanted]
            probs = log_probs.exp()
            entropy[chunk] = -(probs * log_probs).sum(-1)
            mean_logit[chunk] = logits.mean(-1)
            on_top[chunk] = logits.argmax(-1) == wanted
            if grad_hidden is not None:
                probs[picked, wanted] -= 1  # d(log p[target]) / d(logits) = one-hot - softmax: here its negative
                grad_hidden[chunk] = -(probs.to(hidden.dtype) @ weight)
        ctx.save_for_backward(grad_hidden)
        ctx.mark_non_differentiable(entropy, mean_logit, on_top)
        return log_prob, entropy, mean_logit, on_top

    @staticmethod
    def backward(ctx, grad_log_prob, _grad_entropy, _grad_mean_logit, _grad_on_top):
        (grad_hidden,) = ctx.saved_tensors
        if grad_hidden is None:
            return None, None, None, None
        return grad_hidden * grad_log_prob.unsqueeze(-1).to(grad_hidden.dtype), None, None, None


def add_label_only_head(model, autocast) -> None:
    """Answer TRL's model(..., labels=..., fused_lm_head=True) with LabelLogProbs while the head needs no gradient
    (a reference model, evaluation, a frozen head); otherwise, and for any other call, TRL's own forward runs.
    Call after the trainer has added TRL's fused head; the model must pass label_only_logits_possible.
    `autocast`: the trainer's mixed precision (accelerator.autocast), which a prepared model's own forward
    applies; without it the reference would score in fp32 and the policy in bf16, and differ at step 0."""
    trl_forward = model.forward

    @functools.wraps(trl_forward)  # generate() checks its arguments against the original signature
    def forward(*args, fused_lm_head=False, labels=None, **kwargs):
        head = model.get_output_embeddings().weight
        if (not fused_lm_head or kwargs.get("shift_labels") is not None
                or (head.requires_grad and torch.is_grad_enabled())):
            return trl_forward(*args, fused_lm_head=fused_lm_head, labels=labels, **kwargs)
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        kwargs.pop("shift_labels", None)
        with autocast():
            hidden = model.base_model(*args, **{**kwargs, "use_cache": False}).last_hidden_state[:, :-1]
            targets = labels[:, 1:]
            mask = targets != IGNORE_INDEX  # position t predicts token t+1
            per_token = LabelLogProbs.apply(hidden[mask], head, targets[mask], torch.is_grad_enabled())
        log_probs, entropy, mean_logits, is_top1 = (x.new_zeros(mask.shape).masked_scatter(mask, x) for x in per_token)
        labelled = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(loss=-log_probs.sum() / labelled, log_probs=log_probs, entropy=entropy,
                                   mean_logits=mean_logits, is_top1=is_top1, label_mask=mask)

    model.forward = forward
