"""Training: one generic loop and the runners (pretrain, finetune, later prune and tomo)."""
