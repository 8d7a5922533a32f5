"""Shared code for the SFT tutorial's scripts, one subpackage per stage, one module per step:

    data/    load (any dataset format), chat_format (the template), masking (the labels), token_cache, kit,
             constraints (form instructions and their checkers), preferences (DPO's pairs)
    train/   run (checks and the end of a run), trainer (TRL's SFTTrainer; DPO's and GRPO's configs),
             label_only_loss, callbacks, lora, checkpoints, save, metadata, model_card, preflight, estimates
    eval/    compare, evaluate (IFEval, behaviour, held-out loss), ifeval, instructions, report_card
    serve/   chat (terminal), web (browser page and OpenAI-compatible API)
    export/  gguf (the GGUF file), converter (llama.cpp's own), modelfile (Ollama)

and the modules they share: settings, models, generation, devices, distributed, offline_kit, console,
errors. docs/how-sft-works.md draws the tree with one line per module.
"""

import logging

# PEFT imports bitsandbytes, which warns at import time that an optional CPU kernel package is missing:
# nothing a learner can act on, and printed before any of our code runs.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
