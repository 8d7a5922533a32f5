"""Train: the run around the recipe, TRL's trainers, the loss, callbacks, LoRA, checkpoints, saving."""
