"""Evaluation: CLIP score, FID, IS, teacher-student fidelity and a family's judge, with the paper's protocol."""
