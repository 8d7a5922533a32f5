"""Preference tuning (DPO): teach the SFT chatbot to prefer better answers, starting from train_chatbot.py's model.

    python train_dpo.py --quick            # minutes on a CPU: ./chatbot-test (quick_test.py's) -> ./chatbot-dpo-test
    python train_dpo.py                    # ./chatbot-finetuned (train_chatbot.py's) -> ./chatbot-dpo
    python train_dpo.py --pairs my_pairs.jsonl   # your own prompt/chosen/rejected pairs (see README)
    python train_dpo.py --offline          # pairs from the offline kit: its answers chosen, the SFT model's rejected
    python train_dpo.py --pairs kit-loops  # the kit's answers chosen, the same answers made to loop rejected

Direct Preference Optimization (Rafailov et al., 2023) learns from pairs: a prompt, an answer to prefer
(chosen) and one to avoid (rejected). The SFT model, frozen, is the reference; each answer's "reward"
is BETA x log(p_model(answer) / p_reference(answer)), summed over its tokens, and the loss,
-log sigmoid(reward chosen - reward rejected), widens that margin while BETA keeps the model near
the reference. There is no reward model and no sampling while training: it is a classification loss.

Every constant below is also a command-line flag (--help lists them, with these comments).
"""

from pathlib import Path

from accelerate.utils import set_seed

from sft import models, settings
from sft.data import chat_format, preferences
from sft.distributed import only_the_main_process_prints
from sft.errors import exit_on_user_error
from sft.train import metadata, save
from sft.train.callbacks import AnswersAtEvaluation, LogLines, NoCheckpointAtTheEnd, StopOnCtrlC
from sft.train.lora import lora_config
from sft.train.run import Run
from sft.train.trainer import DPOTrainer, dpo_config  # TRL's DPOTrainer, printing our log lines

# --- settings ----------------------------------------------------------------------------------
# What to train, on what
SFT_MODEL = "./chatbot-finetuned"  # the SFT model folder to start from (train_chatbot.py's OUTPUT_DIR); the reference
PAIRS = "HuggingFaceH4/ultrafeedback_binarized"  # Hub dataset, prompt/chosen/rejected file, self-generated or kit-loops
PAIRS_SPLIT = "train_prefs"  # split to read from a Hub dataset or a saved DatasetDict
NUM_PAIRS = 2000  # preference pairs to train on; held-out pairs are extra
OUTPUT_DIR = "./chatbot-dpo"  # where the DPO model folder is written
# How long, how fast
BETA = 0.1  # how far the model may move from the SFT model: higher keeps it closer (TRL's default)
NUM_EPOCHS = 1.0  # passes over the pairs
MAX_STEPS = 0  # if above 0: stop after this many optimizer steps instead of NUM_EPOCHS
LEARNING_RATE = 1e-6  # peak AdamW learning rate, decayed linearly to 0 (far below SFT's: BENCHMARKS.md, DPO sweep)
BATCH_SIZE = 4  # pairs per forward pass on each device (each pair is two sequences, chosen and rejected)
GRADIENT_ACCUMULATION_STEPS = 4  # forward passes summed into one optimizer step
MAX_LENGTH = 1024  # longest prompt + answer in tokens; longer ones are cut at the end
PRECISION = "auto"  # auto: bf16 where the GPU or CPU has it natively, else fp16 (old GPUs) or fp32; or bf16, fp16, fp32
FREEZE_EMBEDDINGS = False  # keep the token embedding (and an output head tied to it) as it is: faster steps
# LoRA: train small adapters instead of every weight (the reference is then the model with them switched off)
LORA = False  # train LoRA adapters (saved merged into the model, and alone in OUTPUT_DIR/adapter)
QLORA = False  # LoRA on the model held in 4 bits (NVIDIA GPU and pip install bitsandbytes): the least memory
LORA_LEARNING_RATE = 5e-5  # LEARNING_RATE with LoRA, unless --learning-rate is given (not swept on quality)
LORA_RANK = 16  # adapter size r
LORA_ALPHA = 32  # adapters are scaled by alpha / r
LORA_DROPOUT = 0.0  # dropout on the adapters' input while training
LORA_TARGET_MODULES = "all-linear"  # layers that get adapters: all-linear, or names such as c_attn or q_proj,v_proj
# Self-generated pairs (offline): the SFT model's own answer is the rejected one
REJECTED_MAX_NEW_TOKENS = 128  # length limit of the SFT model's answers
REJECTED_TEMPERATURE = 0.7  # their sampling temperature (top-p 0.9, as in the chat); 0: greedy, as eval decodes
STOP_BEFORE_LOOPS = False  # where the SFT model's answer loops, prefer it cut before the loop to the corpus answer
# Evaluation, logging, checkpoints
EVAL_PAIRS = 64  # held-out pairs for the eval loss and the preference accuracy (never trained on)
SEED = 42  # random seed: sampling, the held-out split, the order of the pairs
LOGGING_STEPS = 10  # optimizer steps between log lines
REPORT_TO = "none"  # also log to tensorboard (pip install tensorboard; logs in ./runs/) or wandb
SAVE_STEPS = 200  # optimizer steps between resumable checkpoints (the newest two are kept)
RESUME = True  # run the same command again to continue an interrupted run (--no-resume: start over)
GRADIENT_CHECKPOINTING = False  # recompute activations in the backward pass: less memory, a little slower
OFFLINE = False  # build pairs from the offline kit without asking the Hub
OVERWRITE = False  # replace an OUTPUT_DIR (or checkpoints) left by a run with other settings
TRUST_REMOTE_CODE = False  # let a model repository run its own Python code; leave off unless you trust it
QUICK = False  # a few minutes on a CPU: the settings in QUICK_RUN below, except those given as flags

QUICK_RUN = dict(SFT_MODEL="./chatbot-test", OUTPUT_DIR="./chatbot-dpo-test",
                 PAIRS=preferences.KIT_LOOPS,  # nothing generated: 3.4 min faster, more stops (BENCHMARKS.md)
                 NUM_PAIRS=48, EVAL_PAIRS=16, MAX_STEPS=12, GRADIENT_ACCUMULATION_STEPS=1,  # 12 steps of 4 pairs
                 FREEZE_EMBEDDINGS=True)  # 2.9x faster steps on a CPU, the same quality (BENCHMARKS.md, DPO on a CPU)


# --- the recipe ----------------------------------------------------------------------------------
@exit_on_user_error
@only_the_main_process_prints
def main(argv=None, **overrides):
    s = settings.parse({**settings.constants(globals()), **overrides}, argv, __doc__, Path(__file__),
                       presets={"quick": QUICK_RUN})
    with Run(s) as run:  # checks before any work; the output folder is ours until the run ends
        set_seed(s.seed)

        # 1. The SFT model's tokenizer, with the chat template it was trained with (kept as it is)
        sft_model = models.finetuned_source(s.sft_model, flag="--sft-model")
        tokenizer = chat_format.load_sft_tokenizer(sft_model, s.trust_remote_code)

        # 2. The SFT model: the one DPO trains; TRL loads it again, frozen, as the reference (LoRA: adapters off)
        model = models.load_model_for_training(sft_model, s, run.device)

        # 3. The pairs: prompt, chosen and rejected answers, as messages (offline: the SFT model writes the rejected)
        pairs = preferences.load_pairs(s, model, tokenizer, models.hub_available)

        # 4. TRL's DPOTrainer: renders each pair with the template, the reference's log-probabilities, DPO's loss
        stop_on_ctrl_c = StopOnCtrlC()
        trainer = DPOTrainer(
            model=model,
            args=dpo_config(s, run, evaluate=bool(pairs.eval)),
            train_dataset=preferences.as_dataset(pairs.train),
            eval_dataset=preferences.as_dataset(pairs.eval) if pairs.eval else None,
            processing_class=tokenizer,
            peft_config=lora_config(s, model),  # with LoRA the reference is the model with its adapter switched off
            callbacks=[LogLines(), AnswersAtEvaluation(tokenizer), stop_on_ctrl_c, NoCheckpointAtTheEnd()],
        )
        if pairs.name == preferences.KIT_LOOPS:  # a greedy loop does not end: no end of turn after the rejected one
            preferences.leave_loops_open(trainer, tokenizer)
        run.before_training(trainer, preferences.token_stats(trainer.train_dataset, s.max_length))  # disk, memory, time

        # 5. Train: the first Ctrl-C saves a checkpoint and stops; the same command then resumes from it
        with stop_on_ctrl_c, run.failures_explained():
            trainer.train(resume_from_checkpoint=run.resume_from)
        stop_on_ctrl_c.stop_if_requested(trainer)

        # 6. Save the model and the SFT model's tokenizer and template, with what was trained, all at once
        record = metadata.describe_dpo(run, trainer, sft_model, pairs)
        save.write_model_folder(run, trainer, tokenizer, record)
    run.print_summary(record)


if __name__ == "__main__":
    main()
