"""README.md of a fine-tuned folder: a Hugging Face model card, written from training_metadata.json."""

from sft.data.chat_format import render
from sft.data.preferences import KIT_PAIRS

# Licences of the models and data the scripts name; anything else: see its own page.
KNOWN_LICENCES = {
    "gpt2": "MIT",
    "google/gemma-3-270m": "Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
    "EleutherAI/pythia-160m": "Apache-2.0",
    "EleutherAI/pythia-410m": "Apache-2.0",
    "HuggingFaceH4/ultrachat_200k": "MIT",
    "sharegpt-first-exchanges": "Apache-2.0 by its upstream dataset card (anon8231489123/ShareGPT_Vicuna_unfiltered); "
                                "the answers are ChatGPT's, under OpenAI's terms of use",
    "chatterbot-corpus": "BSD-3-Clause",
    "HuggingFaceH4/ultrafeedback_binarized": "MIT",
}
EXAMPLE = [{"role": "user", "content": "What is the capital of France?"},
           {"role": "assistant", "content": "The capital of France is Paris."}]


def _licence(name: str) -> str:
    return KNOWN_LICENCES.get(name, "see its own page")


def _loss(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _method(m: dict) -> str:
    lora = m["lora"]
    if not lora:
        return "full fine-tuning: every weight trained"
    kind = "QLoRA (LoRA on the base held in 4-bit NF4)" if m["settings"].get("qlora") else "LoRA"
    return (f"{kind}, rank {lora['rank']}, alpha {lora['alpha']}, on {', '.join(lora['target_modules'])} "
            f"({lora['trainable_parameters']:,} trainable parameters); {lora['saved']}")


def _batch(m: dict) -> str:
    processes = m["environment"]["num_processes"]
    on_processes = f" x {processes} processes" if processes > 1 else ""
    return f"{m['settings']['batch_size']} x {m['settings']['gradient_accumulation_steps']} accumulated{on_processes}"


def model_card(metadata: dict, tokenizer) -> str:
    """The model card of a fine-tuned folder, from its training_metadata.json (metadata.py)."""
    if metadata["stage"] == "dpo":
        return dpo_model_card(metadata, tokenizer)
    if metadata["stage"] == "grpo":
        return grpo_model_card(metadata, tokenizer)
    m, data, results, settings = metadata, metadata["data"], metadata["results"], metadata["settings"]
    environment = metadata["environment"]
    return f"""{front_matter(m['base_model'], 'sft')}

# Chat model fine-tuned from {m['base_model']}

Supervised fine-tuning (SFT) of `{m['base_model']}` on {m['num_samples']:,} conversations of `{m['dataset']}`,
so that it answers as the assistant of a `User:` / `Assistant:` chat and then stops.

| | |
|---|---|
| base model | `{m['base_model']}` ({m['model_parameters'] / 1e6:.1f}M parameters, from {m['base_model_source']}) |
| data | `{m['dataset']}` ({data['format']} format, split `{data['split']}`, from {data['source']}): {m['num_samples']:,} training and {data['num_eval_samples']:,} held-out conversations |
| method | {_method(m)} |
| trained tokens | the assistant's answers and their end-of-text token only ({data['trained_tokens_per_epoch']:,} per epoch) |
| training | {results['optimizer_steps']} optimizer steps ({results['epochs_completed']:g} epochs) of {results['effective_batch_size']} conversations ({_batch(m)}), learning rate {m['learning_rate']:g} (AdamW, linear decay), max length {settings['max_length']}, seed {settings['seed']} |
| held-out loss | {_loss(results['eval_loss_before'])} before, {_loss(results['eval_loss'])} after (mean cross-entropy per trained token) |
| final training loss | {_loss(results['final_train_loss'])} |
| machine | {environment['device']}, {environment['precision']}, {results['train_seconds']:,.0f} s of training |
| licences | base model: {_licence(m['base_model'])}; data: {_licence(m['dataset'])} |

All figures are in `training_metadata.json`; `loss_curve.png` plots the losses. How well it follows
instructions (IFEval), how it behaves and its held-out loss, against its base model, are in its
[report card](report.md), written by `python test_chatbot.py --mode eval --model PATH/TO/THIS/FOLDER`.

{usage(tokenizer)}"""


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def dpo_model_card(metadata: dict, tokenizer) -> str:
    """The model card of a DPO folder: preference tuning on top of an SFT model."""
    m, data, results, settings = metadata, metadata["data"], metadata["results"], metadata["settings"]
    sft = m["sft_model"]
    return f"""{front_matter(m['base_model'], 'dpo')}

# Chat model preference-tuned (DPO) from `{m['base_model']}`

Direct Preference Optimization of the SFT model `{m['base_model']}` (itself fine-tuned from
`{sft['base_model'] or 'unknown'}` on `{sft['dataset'] or 'unknown'}`) on {m['num_samples']:,} preference pairs of
`{m['dataset']}`. The chat template is the SFT model's, unchanged.

| | |
|---|---|
| starting and reference model | `{m['base_model']}` ({m['model_parameters'] / 1e6:.1f}M parameters) |
| pairs | `{m['dataset']}` (from {data['source']}): {m['num_samples']:,} training and {data['num_eval_samples']:,} held-out pairs; rejected answers: {data['rejected_from']} |
| method | DPO (TRL's sigmoid loss), beta {m['beta']:g}; {_method(m)} |
| training | {results['optimizer_steps']} optimizer steps ({results['epochs_completed']:g} epochs) of {results['effective_batch_size']} pairs ({_batch(m)}), learning rate {m['learning_rate']:g} (AdamW, linear decay), max length {settings['max_length']}, seed {settings['seed']} |
| held-out pairs | DPO loss {_loss(results['eval_loss_before'])} before (ln 2: the model is its own reference), {_loss(results['eval_loss'])} after; preference accuracy {_share(results['eval_preference_accuracy'])} (the chosen answer gains more than the rejected one, relative to the reference), reward margin {_loss(results['eval_reward_margin'])} |
| machine | {m['environment']['device']}, {m['environment']['precision']}, {results['train_seconds']:,.0f} s of training |
| licences | base model: {_licence(sft['base_model'] or '')}; SFT data: {_licence(sft['dataset'] or '')}; pairs: {_licence('sharegpt-first-exchanges' if m['dataset'] in KIT_PAIRS else m['dataset'])} |

All figures are in `training_metadata.json`; `loss_curve.png` plots the losses. Its [report card](report.md)
(`python test_chatbot.py --mode eval --model PATH/TO/THIS/FOLDER`) measures it against the SFT model.

{usage(tokenizer)}"""


def grpo_model_card(metadata: dict, tokenizer) -> str:
    """The model card of a GRPO folder: reinforcement learning with checked form instructions as rewards."""
    m, data, results, settings = metadata, metadata["data"], metadata["results"], metadata["settings"]
    start = m["sft_model"]
    return f"""{front_matter(m['base_model'], 'grpo')}

# Chat model trained with GRPO from `{m['base_model']}`

Reinforcement learning (GRPO) of `{m['base_model']}` (itself trained from `{start['base_model'] or 'unknown'}` on
`{start['dataset'] or 'unknown'}`) on {m['num_samples']:,} requests of `{m['dataset']}`, each given a form
instruction, rewarded by the instruction's own checker. The chat template is the starting model's, unchanged.

| | |
|---|---|
| starting and reference model | `{m['base_model']}` ({m['model_parameters'] / 1e6:.1f}M parameters) |
| prompts | `{m['dataset']}` (from {data['source']}): {m['num_samples']:,} requests with a form instruction ({len(data['instructions'])} types), {data['num_eval_samples']:,} held out |
| reward | 1 when the checker passes, plus {settings['clean_stop_reward']:g} when the answer ends its turn cleanly |
| method | GRPO (TRL), {settings['num_generations']} answers per prompt, temperature {settings['temperature']:g}, up to {settings['max_completion_length']} tokens, KL coefficient beta {m['beta']:g}; {_method(m)} |
| training | {results['optimizer_steps']} optimizer steps of {results['effective_batch_size']} answers ({_batch(m)}), learning rate {m['learning_rate']:g} (AdamW, linear decay), seed {settings['seed']} |
| held-out requests, greedy | form instructions followed {_share(results['held_out_followed_before'])} before, {_share(results['held_out_followed'])} after; clean stop {_share(results['held_out_clean_stop_before'])} before, {_share(results['held_out_clean_stop'])} after |
| machine | {m['environment']['device']}, {m['environment']['precision']}, {results['train_seconds']:,.0f} s of training |
| licences | base model: {_licence(start['base_model'] or '')}; data: {_licence(m['dataset'])} |

All figures are in `training_metadata.json`; `loss_curve.png` plots the mean reward. Its [report card](report.md)
(`python test_chatbot.py --mode eval --model PATH/TO/THIS/FOLDER`) measures it against the model it started from.

{usage(tokenizer)}"""


def front_matter(base_model: str, method: str) -> str:
    """The card's YAML header, which the Hub reads."""
    return f"---\nbase_model: {base_model}\nlibrary_name: transformers\npipeline_tag: text-generation\n" \
           f"tags: [{method}, trl, chat]\n---"


def usage(tokenizer) -> str:
    return f"""## Chat format

The chat template is saved with the tokenizer, so `apply_chat_template` and `pipeline` use it:

```
{render(tokenizer, EXAMPLE)}
```

## Use

```python
from transformers import pipeline

chat = pipeline("text-generation", model="PATH/TO/THIS/FOLDER")
reply = chat([{{"role": "user", "content": "What is the capital of France?"}}], max_new_tokens=60)
print(reply[0]["generated_text"][-1]["content"])
```
"""
