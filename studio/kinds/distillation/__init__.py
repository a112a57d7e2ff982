"""Knowledge distillation of block-removed students (BK-SDM pretraining)."""
