"""Training the dialogue and MMI models: batches, loss, checkpoints, DDP, the trainer and its report."""
