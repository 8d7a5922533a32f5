"""Shared code for the SFT tutorial scripts. train_chatbot.py's main() calls the steps in this order:

    settings.py        the constants at the top of train_chatbot.py, and the flags made from them
    run.py             one run: checks before any work (preflight.py), the device, what happens at its end
    1. chat_format.py  format   the chat template (User:/Assistant:) saved with the model
       models.py                find and load the base model and its tokenizer (local, Hub, offline kit)
    2. data.py         load     any supported dataset -> lists of {role, content} messages
    3. masking.py      mask     token ids and labels: the answers' tokens, IGNORE_INDEX elsewhere
       token_cache.py           tokenized chats kept on disk for the next run
    4. models.py       model    the base model on the chosen device (devices.py)
       lora.py                  LoRA / QLoRA adapters (PEFT)
    5. trainer.py      train    TRL's SFTTrainer with our settings as an SFTConfig
       label_only_loss.py       the loss with the LM head only where a label is (off CUDA)
       callbacks.py             log lines, answers at each evaluation, Ctrl-C, no checkpoint at the end
       estimates.py             steps, CPU time, memory and disk, measured before training
       checkpoints.py           resumable checkpoints
    6. save.py         save     the finished model folder, written atomically
       metadata.py              training_metadata.json: what was trained, how, with what result
       model_card.py            README.md of the output folder

train_dpo.py (preference tuning, after SFT) uses the same steps, with pairs instead of chats:

    chat_format.py     the SFT model's tokenizer, its chat template kept as it is
    preferences.py     prompt/chosen/rejected pairs: Hub, local file, or self-generated offline (the SFT
                       model's own sampled answers rejected, cached)
    trainer.py         TRL's DPOTrainer with our settings as a DPOConfig (beta)
    metadata.py        describe_dpo(): stage "dpo", the SFT model as its base, the held-out preference accuracy

test_chatbot.py uses:

    generation.py      generate answers through the chat template, in batches or streamed
    compare.py         compare  base and fine-tuned model on the same prompts, behaviour measured
    evaluate.py        evaluate IFEval (ifeval.py), behaviour and held-out loss; report_card.py writes them
    chat.py                     the chat in the terminal
    web.py                      the chat in the browser (web_page.html) and its OpenAI-compatible API

And: offline_kit.py and kit_data.py (the offline kit: a real base model and chat data from PyPI),
distributed.py (accelerate launch), console.py (banners, quiet libraries), errors.py (messages and exit codes).
"""

import logging

# PEFT imports bitsandbytes, which warns at import time that an optional CPU kernel package is missing:
# nothing a learner can act on, and printed before any of our code runs.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
