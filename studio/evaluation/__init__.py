"""Evaluation: CLIP score, FID, IS, teacher-student fidelity and the toy judge, with the paper's protocol."""
