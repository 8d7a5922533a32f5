"""What a run will take, measured before it starts: the training time on a CPU."""

import time


def time_one_batch(trainer) -> tuple[float, int]:
    """(seconds for one forward and backward pass, tokens in it) on the first real batch of the training set."""
    import torch

    rows = min(len(trainer.train_dataset), trainer.args.per_device_train_batch_size)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(rows)])
    seconds = []
    for _ in range(2):  # the first pass pays one-off start-up costs
        started = time.time()
        trainer.model(**batch).loss.backward()
        seconds.append(time.time() - started)
    trainer.model.zero_grad(set_to_none=True)
    torch.manual_seed(trainer.args.seed)  # training starts from the same random state as without the estimate
    return seconds[-1], int(batch["attention_mask"].sum())


def cpu_training_time(trainer, settings, tokens_per_epoch: int, processes: int) -> str:
    """The whole run's training time, scaled from one batch (the processes share the work)."""
    seconds, tokens = time_one_batch(trainer)
    tokens_per_second = tokens / seconds * processes
    if settings.max_steps > 0:
        epochs = settings.max_steps * settings.effective_batch_size * processes / len(trainer.train_dataset)
    else:
        epochs = settings.num_epochs
    minutes = tokens_per_epoch * epochs / tokens_per_second / 60
    return (f"about {minutes:,.0f} min of training ({tokens_per_second:,.0f} tokens/s measured on one batch)"
            if minutes >= 1 else f"under a minute of training ({tokens_per_second:,.0f} tokens/s)")
