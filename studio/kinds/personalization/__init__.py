"""Personalization: DreamBooth (LoRA through peft, or full finetuning) from a few photos."""
