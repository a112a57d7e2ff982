"""The toy world's components: Stable Diffusion's pieces, made small.

The U-Net keeps SD's stage structure (three cross-attention down stages and a
plain one, a cross-attention mid block, the mirrored up path, two layers per
stage), so the paper's Base/Small/Tiny removals apply to it unchanged.
"""

import json
import string
from pathlib import Path

from studio.toy.prompts import NUMBERS, RELATIONS
from studio.toy.scenes import BACKGROUNDS, COLORS, PLURALS, SHAPES

MAX_TOKENS = 16  # the longest toy prompt is 11 words, 13 tokens with BOS and EOS
WORDS = ("a", "an", "the", "on", "of", "in", "and", "with", "background", "photo", "shape", "sks", "one",
         *SHAPES, *PLURALS.values(), *COLORS, *BACKGROUNDS, *NUMBERS, *(w for r in RELATIONS for w in r.split()))
BOS, EOS = "<|startoftext|>", "<|endoftext|>"

UNET_CONFIG = {
    "_class_name": "UNet2DConditionModel",
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [32, 64, 64, 64],
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "layers_per_block": 2,
    "cross_attention_dim": 64,
    "attention_head_dim": 2,  # heads; more, narrower heads made training twice as slow on CPU
    "norm_num_groups": 32,
}
# Three stages: 64x64 pixels to a 16x16 latent, so a U-Net step costs what it did at 32x32 with two stages.
# The full-resolution stage is narrow (16 channels) to keep the VAE's cost near the two-stage one's.
VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [16, 32, 64],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 64,
}
TEXT_CONFIG = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 3,  # one more than the one-shape world's: relations and two colored nouns
    "num_attention_heads": 4,
    "max_position_embeddings": MAX_TOKENS,
    "projection_dim": 64,
}
# Stable Diffusion's noise schedule.
SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
TERMINAL_ALPHA_BAR = 2.0**-24  # diffusers' Euler floors a zero terminal SNR here: sigma(T) stays finite


def zero_terminal_snr_betas() -> list[float]:
    """SCHEDULE's betas rescaled so almost no signal is left at t = T (Lin et al. 2024, as diffusers'
    rescale_betas_zero_snr), with alpha_bar(T) floored at TERMINAL_ALPHA_BAR instead of 0, so the samplers
    that work in sigma (Euler, DPM++) can start there. Stored as `trained_betas` in a pipeline's scheduler
    config, they reach every sampler and trainer built from it."""
    import torch
    from diffusers import DDPMScheduler

    betas = DDPMScheduler(**SCHEDULE, rescale_betas_zero_snr=True).betas.double()
    alpha_bar = torch.cumprod(1 - betas, 0)
    betas[-1] = 1 - TERMINAL_ALPHA_BAR / alpha_bar[-2]
    return betas.tolist()


def _bpe(pieces: list[str], ranks: dict) -> list[str]:
    """CLIP's BPE on one word: merge the best-ranked adjacent pair until none applies."""
    while len(pieces) > 1:
        pair = min(zip(pieces, pieces[1:]), key=lambda p: ranks.get(p, float("inf")))
        if pair not in ranks:
            break
        merged, i = [], 0
        while i < len(pieces):
            if i + 1 < len(pieces) and (pieces[i], pieces[i + 1]) == pair:
                merged.append(pieces[i] + pieces[i + 1])
                i += 2
            else:
                merged.append(pieces[i])
                i += 1
        pieces = merged
    return pieces


def tokenizer_files(folder: "str | Path") -> Path:
    """Write CLIP BPE files whose merges turn every toy word into one token.

    Single characters (with and without the end-of-word mark) stay in the
    vocabulary, so any other word still tokenizes, character by character.
    Merges are appended per word until BPE yields the whole word; appended
    merges rank last, so they never change a word that is already whole.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = string.ascii_lowercase + string.digits
    tokens = [*chars, *(c + "</w>" for c in chars)]
    ranks: dict[tuple[str, str], int] = {}
    for word in WORDS:
        while len(pieces := _bpe([*word[:-1], word[-1] + "</w>"], ranks)) > 1:
            for left, right in zip(pieces[::2], pieces[1::2]):  # pair up what BPE left
                ranks.setdefault((left, right), len(ranks))
                tokens.append(left + right)
    tokens = list(dict.fromkeys(tokens)) + [BOS, EOS]
    merges = [f"{a} {b}" for (a, b), _ in sorted(ranks.items(), key=lambda item: item[1])]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, indent=0))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": MAX_TOKENS, "bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS,
        "tokenizer_class": "CLIPTokenizer",
    }, indent=2))
    return folder


def build_components(folder: "str | Path"):
    """Fresh (untrained) toy tokenizer, text encoder, VAE and U-Net."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_files(Path(folder) / "tokenizer"))
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **TEXT_CONFIG,
    ))
    vae = AutoencoderKL.from_config(VAE_CONFIG)
    unet = UNet2DConditionModel.from_config(UNET_CONFIG)
    return tokenizer, text_encoder, vae, unet
