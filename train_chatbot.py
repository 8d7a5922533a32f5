"""Supervised fine-tuning: turn a base language model into a User/Assistant chatbot.

    python train_chatbot.py                                  # the full run: GPT-2, 5,000 UltraChat chats
    python train_chatbot.py --num-train-samples 500 --num-epochs 1
    python train_chatbot.py --base-model EleutherAI/pythia-160m
    python train_chatbot.py --dataset-name my_chats.jsonl    # your own data (see README: formats)
    python train_chatbot.py --offline                        # no Hub: the offline starter kit

Every constant below is also a command-line flag (--help lists them, with these comments).
"""

from pathlib import Path

from accelerate.utils import set_seed

from sft import models, settings
from sft.data import chat_format, load, token_cache
from sft.distributed import only_the_main_process_prints
from sft.errors import exit_on_user_error
from sft.train import metadata, save
from sft.train.callbacks import AnswersAtEvaluation, LogLines, NoCheckpointAtTheEnd, StopOnCtrlC
from sft.train.lora import lora_config
from sft.train.run import Run
from sft.train.trainer import SFTTrainer, sft_config  # TRL's SFTTrainer with two measured changes (see there)

# --- settings ----------------------------------------------------------------------------------
# What to train, on what
BASE_MODEL = "gpt2"  # Hub name or local folder of the base model (124M; try EleutherAI/pythia-160m)
DATASET_NAME = "HuggingFaceH4/ultrachat_200k"  # Hub dataset, or a local .jsonl/.json/.parquet/.csv file or folder
DATASET_SPLIT = "train_sft"  # split to read from a Hub dataset or a saved DatasetDict
NUM_TRAIN_SAMPLES = 5000  # chats to train on (more: a better chatbot and a longer run); held-out chats are extra
# The offline kit's instruction data only (sft/data/kit.py): what share of the training chats. Off: at
# quick_test.py's scale, 0.2 / 0.1 / 0.3 made the model worse (BENCHMARKS.md: the kit's training mix)
MULTI_TURN_SHARE = 0.0  # kit: share of training chats with 2-3 exchanges (the next turns of the conversation)
LONG_ANSWER_SHARE = 0.0  # kit: share of training chats with a long answer (121-300 words instead of 15-120)
CONSTRAINT_SHARE = 0.0  # kit: share of training chats asking for a form (lowercase, JSON, N bullets...), obeyed
OUTPUT_DIR = "./chatbot-finetuned"  # where the fine-tuned model folder is written
# How long, how fast
NUM_EPOCHS = 3.0  # passes over the training chats
MAX_STEPS = 0  # if above 0: stop after this many optimizer steps instead of NUM_EPOCHS
LEARNING_RATE = 2e-5  # peak AdamW learning rate, decayed linearly to 0
# 4 chats of up to 1,024 tokens per pass, 4 passes summed into one optimizer step: an effective batch of 16.
# Out of memory? Halve BATCH_SIZE and double GRADIENT_ACCUMULATION_STEPS, lower MAX_LENGTH, or set
# GRADIENT_CHECKPOINTING.
BATCH_SIZE = 4  # chats per forward pass on each device
GRADIENT_ACCUMULATION_STEPS = 4  # forward passes summed into one optimizer step
MAX_LENGTH = 1024  # longest training sequence in tokens (GPT-2's whole context); longer chats are cut between turns
DROPOUT = 0.0  # dropout while training (GPT-2 was pretrained with 0.1; none trains faster, see BENCHMARKS.md)
PRECISION = "auto"  # auto: bf16 where the GPU or CPU has it natively, else fp16 (old GPUs) or fp32; or bf16, fp16, fp32
FREEZE_EMBEDDINGS = False  # keep the token embedding (and an output head tied to it) as it is: faster steps
# LoRA: train small adapters instead of every weight (less memory, bigger models)
LORA = False  # train LoRA adapters (saved merged into the model, and alone in OUTPUT_DIR/adapter)
QLORA = False  # LoRA on the base model held in 4 bits (NVIDIA GPU and pip install bitsandbytes): the least memory
LORA_LEARNING_RATE = 2e-4  # LEARNING_RATE with LoRA (adapters need larger steps), unless --learning-rate is given
LORA_RANK = 16  # adapter size r
LORA_ALPHA = 32  # adapters are scaled by alpha / r
LORA_DROPOUT = 0.0  # dropout on the adapters' input while training
LORA_TARGET_MODULES = "all-linear"  # layers that get adapters: all-linear, or names such as c_attn or q_proj,v_proj
# Evaluation, logging, checkpoints
EVAL_FRACTION = 0.02  # share of chats held out for the eval loss (at least 32)
SEED = 42  # random seed: sampling, the held-out split, initialisation
LOGGING_STEPS = 10  # optimizer steps between log lines
REPORT_TO = "none"  # also log to tensorboard (pip install tensorboard; logs in ./runs/) or wandb
SAVE_STEPS = 200  # optimizer steps between resumable checkpoints (the newest two are kept)
RESUME = True  # run the same command again to continue an interrupted run (--no-resume: start over)
GRADIENT_CHECKPOINTING = False  # recompute activations in the backward pass: less memory, a little slower
COMPILE = False  # torch.compile the model's blocks (BENCHMARKS.md: when it pays)
OFFLINE = False  # use the offline starter kit without asking the Hub
OVERWRITE = False  # replace an OUTPUT_DIR (or checkpoints) left by a run with other settings
TRUST_REMOTE_CODE = False  # let a model repository run its own Python code; leave off unless you trust it


# --- the recipe ----------------------------------------------------------------------------------
@exit_on_user_error
@only_the_main_process_prints
def main(argv=None, description=__doc__, **overrides):
    s = settings.parse({**settings.constants(globals()), **overrides}, argv, description, Path(__file__))
    with Run(s) as run:  # checks before any work; the output folder is ours until the run ends
        set_seed(s.seed)

        # 1. The tokenizer, with our chat template: "User: ...\nAssistant: ...<end-of-text>"
        source = models.find_base_model(s.base_model, s.offline)
        tokenizer = chat_format.load_chat_tokenizer(source, s.trust_remote_code)

        # 2. The chats, as lists of {role, content} messages: NUM_TRAIN_SAMPLES to train on, some held out
        chats = load.chat_dataset(s.dataset_name, s.dataset_split, s.num_train_samples, s.eval_fraction, s.seed,
                                  s.offline, kit_mix=s.kit_mix)

        # 3. Tokens and labels: each answer's tokens are their own label, everything else IGNORE_INDEX
        train_set, eval_set, token_stats = token_cache.tokenize_for_training(tokenizer, chats, s.max_length)

        # 4. The base model, on the device Run picked (fp32 weights; bf16 autocast where the device has it)
        model = models.load_model_for_training(source, s, run.device)

        # 5. TRL's SFTTrainer: batches, loss on the labelled tokens, AdamW, evaluation, checkpoints
        stop_on_ctrl_c = StopOnCtrlC()
        trainer = SFTTrainer(
            model=model,
            args=sft_config(s, run, evaluate=eval_set is not None),
            train_dataset=train_set,
            eval_dataset=eval_set,
            processing_class=tokenizer,
            peft_config=lora_config(s, model),
            callbacks=[LogLines(), AnswersAtEvaluation(tokenizer), stop_on_ctrl_c, NoCheckpointAtTheEnd()],
        )
        run.before_training(trainer, token_stats)  # enough disk and memory? LoRA's size, the CPU time, --compile

        # 6. Train: the first Ctrl-C saves a checkpoint and stops; the same command then resumes from it
        with stop_on_ctrl_c, run.failures_explained():
            trainer.train(resume_from_checkpoint=run.resume_from)
        stop_on_ctrl_c.stop_if_requested(trainer)

        # 7. Save the model and tokenizer (with its template), with what was trained, all at once or not at all
        record = metadata.describe(run, trainer, source, chats, token_stats)
        save.write_model_folder(run, trainer, tokenizer, record)
    run.print_summary(record)


if __name__ == "__main__":
    main()
