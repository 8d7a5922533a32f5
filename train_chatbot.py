"""Supervised fine-tuning: turn a base language model into a User/Assistant chatbot.

    python train_chatbot.py                                  # the full run: GPT-2, 5,000 UltraChat chats
    python train_chatbot.py --num-train-samples 500 --num-epochs 1
    python train_chatbot.py --base-model EleutherAI/pythia-160m
    python train_chatbot.py --dataset-name my_chats.jsonl    # your own data (see README: formats)
    python train_chatbot.py --offline                        # no Hub: the offline starter kit

Every constant below is also a command-line flag (--help lists them).
"""

from sft.train import main_from_constants

BASE_MODEL = "gpt2"  # 124M parameters; try "EleutherAI/pythia-160m" or "EleutherAI/pythia-410m"
DATASET_NAME = "HuggingFaceH4/ultrachat_200k"
DATASET_SPLIT = "train_sft"
NUM_TRAIN_SAMPLES = 5000  # more chats, better chatbot (and a longer run)
OUTPUT_DIR = "./chatbot-finetuned"
NUM_EPOCHS = 3
MAX_STEPS = 0  # if > 0, stop after this many optimizer steps instead of NUM_EPOCHS
LEARNING_RATE = 2e-5  # with LORA, use about 10x more (2e-4)
# 4 chats of up to 1,024 tokens (GPT-2's whole context) per forward pass, 4 passes summed into one
# optimizer step: an effective batch of 16. The tutorial asks for a GPU with 8 GB or more.
# Out of memory? Halve BATCH_SIZE and double GRADIENT_ACCUMULATION_STEPS, lower MAX_LENGTH, or set
# GRADIENT_CHECKPOINTING.
BATCH_SIZE = 4
GRADIENT_ACCUMULATION_STEPS = 4
MAX_LENGTH = 1024  # tokens; longer chats are cut after their last whole answer that fits
LORA = False  # True: train small adapters (LoRA) instead of every weight; less memory, bigger models
QLORA = False  # True: LoRA on the base model held in 4 bits (NVIDIA GPU + pip install bitsandbytes)
LORA_RANK = 16
LORA_ALPHA = 32
LORA_DROPOUT = 0.0
LORA_TARGET_MODULES = "all-linear"  # or some layers by name, e.g. "c_attn" (GPT-2) or "q_proj,v_proj" (Llama)
DROPOUT = 0.0  # GPT-2 was pretrained with 0.1; none trains faster (see BENCHMARKS.md)
EVAL_FRACTION = 0.02  # held-out chats for the eval loss (at least 32)
SEED = 42
LOGGING_STEPS = 10
REPORT_TO = "none"  # or "tensorboard" (pip install tensorboard; logs in ./runs/) or "wandb"
SAVE_STEPS = 200  # checkpoint for --resume; Ctrl-C also saves one before stopping
RESUME = True  # re-running an interrupted run continues from its newest checkpoint (--no-resume: start over)
GRADIENT_CHECKPOINTING = False  # True: less memory, a little slower (BENCHMARKS.md)
COMPILE = False  # True: torch.compile the model's blocks (BENCHMARKS.md: when it pays)
OFFLINE = False  # True: use the offline kit without asking the Hub
OVERWRITE = False
TRUST_REMOTE_CODE = False


def main(argv=None, **overrides):
    constants = {name: value for name, value in globals().items() if name.isupper()}
    main_from_constants({**constants, **overrides}, __doc__, argv)


if __name__ == "__main__":
    main()
