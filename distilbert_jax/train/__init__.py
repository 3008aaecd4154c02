"""Training: config, losses, optimiser, the trainer, LoRA, surgery, distillation."""
