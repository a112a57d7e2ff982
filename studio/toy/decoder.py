"""A tiny decoder for the toy world, distilled from the toy VAE, as TAESD is from SD's.

diffusers' `AutoencoderTiny` (TAESD's layout) at the toy scale: three stages of
32 channels and two 2x upsamplings, the toy VAE's factor of 4. The decoder learns to
reproduce the toy VAE decoder's pixels from latents the VAE's encoder makes of
toy images (sampled, not just the mean, so it also sees latents a little off
the data); the encoder learns the VAE's scaled latent means. The shapes cover a
few percent of a scene, so the decoder's loss weighs their pixels more
(`object_weights`): with a plain MSE the first tiny decoder blurred small shapes
enough to cost a 4-step student 6 judge points against the VAE decoder. Latents
go in as the pipeline holds them (already scaled), so its `scaling_factor` is
1.0, as TAESD's. `python -m studio toy decoder` trains it and writes it to
`assets/toy/tiny-decoder`, with a card giving its fidelity and speed.
"""

import json
import math
import time
from pathlib import Path
from statistics import median

import torch
from diffusers import AutoencoderTiny

from studio.images import from_tensor
from studio.kinds.evaluation.metrics import psnr
from studio.models.loading import load_pipeline
from studio.toy.data import batch_tensors

TOY_TINY_DECODER = {
    "encoder_block_out_channels": (32, 32, 32), "decoder_block_out_channels": (32, 32, 32),
    "num_encoder_blocks": (1, 2, 2), "num_decoder_blocks": (2, 2, 1), "latent_channels": 4, "scaling_factor": 1.0,
}


OBJECT_WEIGHT = 4.0  # extra loss weight of a pixel off the background


def object_weights(images: torch.Tensor, extra: float = OBJECT_WEIGHT, threshold: float = 0.1) -> torch.Tensor:
    """Per-pixel loss weights (N, 1, H, W): 1 on the background (the median of each image's top and bottom rows),
    1 + extra where any channel differs from it by more than `threshold` (images in [-1, 1])."""
    border = torch.cat([images[..., 0, :], images[..., -1, :]], dim=-1).median(dim=-1).values[..., None, None]
    return 1.0 + extra * ((images - border).abs().amax(dim=1, keepdim=True) > threshold).float()


def cosine_to_a_tenth(optimizer, steps: int):
    """The decoders' learning rate: cosine from the peak to a tenth of it. The last steps at a low rate sharpen
    edges that a constant rate keeps shaking."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))


def distill_tiny_decoder(out: Path, steps: int = 2000, batch_size: int = 32, lr: float = 1e-3, seed: int = 0,
                         pool_size: int = 4096, log=print) -> dict:
    torch.manual_seed(seed)
    vae = load_pipeline("toy-teacher").vae.eval().requires_grad_(False)
    tiny = AutoencoderTiny(**TOY_TINY_DECODER)
    optimizer = torch.optim.AdamW(tiny.parameters(), lr=lr)
    schedule = cosine_to_a_tenth(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    pool, _ = batch_tensors(range(pool_size), seed=seed + 1)  # drawing shapes costs more than a step: draw once
    for step in range(1, steps + 1):
        images = pool[torch.randint(pool_size, (batch_size,), generator=generator)]
        with torch.no_grad():
            posterior = vae.encode(images).latent_dist
            latents = posterior.sample(generator) * vae.config.scaling_factor
            target = vae.decode(latents / vae.config.scaling_factor).sample
        decoded = tiny.decode(latents).sample
        encoded = tiny.encode(images).latents
        loss_decoder = (object_weights(images) * (decoded - target) ** 2).mean()
        loss_encoder = torch.nn.functional.mse_loss(encoded, posterior.mean * vae.config.scaling_factor)
        optimizer.zero_grad()
        (loss_decoder + loss_encoder).backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps:
            log(f"step {step}/{steps}: decoder {loss_decoder.item():.5f}, encoder {loss_encoder.item():.5f}")
    train_seconds = time.perf_counter() - started
    card = {"steps": steps, "batch_size": batch_size, "lr": lr, "lr_schedule": "cosine to a tenth",
            "object_weight": OBJECT_WEIGHT, "images": pool_size,
            "train_seconds": round(train_seconds, 1),
            **measure(vae, tiny.eval())}
    out.mkdir(parents=True, exist_ok=True)
    tiny.save_pretrained(out, safe_serialization=True)
    config = json.loads((out / "config.json").read_text())
    config.pop("block_out_channels", None)  # diffusers records it, then warns that AutoencoderTiny does not take it
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    log(json.dumps(card, indent=2))
    return card


@torch.inference_mode()
def measure(vae, tiny, n: int = 256, repeats: int = 21) -> dict:
    """Fidelity of the tiny decoder to the VAE decoder on held-out toy images, the judge's accuracy on each one's
    reconstructions (by their captions; the scenes themselves score 1.0), and both decoders' time."""
    from studio.toy.judge import caption_accuracy

    images, captions = batch_tensors(range(n), seed=10_000)  # data the training never drew
    latents = vae.encode(images).latent_dist.mean * vae.config.scaling_factor
    reference = [from_tensor(x) for x in vae.decode(latents / vae.config.scaling_factor).sample]
    tiny_images = [from_tensor(x) for x in tiny.decode(latents).sample]
    fidelity = median(psnr(a, b) for a, b in zip(tiny_images, reference))
    times = {"vae": [], "tiny": []}
    one = latents[:1]
    for _ in range(repeats):  # interleaved, batch 1; the first round warms up
        for name, decode in (("vae", lambda: vae.decode(one / vae.config.scaling_factor)),
                             ("tiny", lambda: tiny.decode(one))):
            start = time.perf_counter()
            decode()
            times[name].append(time.perf_counter() - start)
    return {"psnr_to_vae_decoder_db": round(fidelity, 2), "held_out_images": n,
            "judge_vae": round(caption_accuracy(captions, reference), 3),
            "judge_tiny": round(caption_accuracy(captions, tiny_images), 3),
            "vae_decode_ms": round(1000 * median(times["vae"][1:]), 3),
            "tiny_decode_ms": round(1000 * median(times["tiny"][1:]), 3),
            "vae_decoder_params": sum(p.numel() for p in vae.decoder.parameters()) +
            sum(p.numel() for p in vae.post_quant_conv.parameters()),
            "tiny_decoder_params": sum(p.numel() for p in tiny.decoder.parameters())}


@torch.no_grad()
def judge_reconstructions(vae, n: int = 600) -> dict:
    """The judge's reading of held-out scenes through the VAE (encode the mean, decode), per task: the ceiling a
    model drawing in this VAE's latents meets (the scenes themselves read 100%)."""
    from studio.toy.judge import judge_images
    from studio.toy.prompts import parse

    images, captions = batch_tensors(range(n), seed=10_000)  # data the training never drew
    decoded = torch.cat([vae.decode(vae.encode(images[i:i + 200]).latent_dist.mean).sample
                         for i in range(0, n, 200)])
    verdict = judge_images([parse(c) for c in captions], [from_tensor(x) for x in decoded])
    return {"tasks": {k: round(v, 3) for k, v in verdict["tasks"].items()}, "overall": round(verdict["overall"], 3),
            "attributes": round(verdict["attributes"], 3), "n": n}


def finetune_vae_decoder(pipeline: Path, out: Path, steps: int = 4500, batch_size: int = 32, lr: float = 3e-4,
                         seed: int = 0, pool_size: int = 20_000, judge_n: int = 600, log=print) -> dict:
    """Train a toy pipeline's VAE decoder on, with its encoder frozen, and write the pipeline with it to `out`.

    The encoder is untouched, so every U-Net trained on its latents stays valid. The toy VAE's decoder, trained
    with a plain MSE beside its encoder, blurs small crosses and diamonds into one another and haloes colors:
    through it the judge read 76% of 600 held-out scenes right by their tasks' rules (position 64%); after 4,500
    steps of this fine-tune, 91% (position 89%: the shipped teacher's decoder). The loss
    here weighs the shapes' pixels more (`object_weights`) and adds an L1 term, which keeps edges sharper than
    MSE alone.
    """
    import shutil

    from diffusers import AutoencoderKL

    if out.resolve() == pipeline.resolve() or out.exists():
        raise ValueError(f"--out: {out} exists or is the source; give a new folder (the old decoder is kept)")
    if not (pipeline / "vae" / "config.json").is_file():
        raise ValueError(f"--pipeline: {pipeline} has no vae/config.json; give a toy pipeline folder")
    torch.manual_seed(seed)
    vae = AutoencoderKL.from_pretrained(pipeline / "vae", torch_dtype=torch.float32, use_safetensors=True).eval()
    before = judge_reconstructions(vae, judge_n)
    log(f"judge through the VAE before: {json.dumps(before)}")
    started = time.perf_counter()
    images, _ = batch_tensors(range(pool_size), seed=seed + 2)
    with torch.no_grad():
        means = torch.cat([vae.encode(images[i:i + 500]).latent_dist.mean for i in range(0, pool_size, 500)])
    vae.requires_grad_(False)
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for param in params:
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = cosine_to_a_tenth(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    vae.decoder.train()
    for step in range(1, steps + 1):
        index = torch.randint(pool_size, (batch_size,), generator=generator)
        target = images[index]
        error = vae.decode(means[index]).sample - target
        loss = (object_weights(target) * (error**2 + error.abs())).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps:
            log(f"step {step}/{steps}: loss {loss.item():.5f}, mse {error.pow(2).mean().item():.5f}")
    train_seconds = time.perf_counter() - started
    vae.eval()
    after = judge_reconstructions(vae, judge_n)
    log(f"judge through the VAE after: {json.dumps(after)}")
    shutil.copytree(pipeline, out)
    vae.to(torch.float16).save_pretrained(out / "vae", safe_serialization=True)
    entry = {"steps": steps, "batch_size": batch_size, "lr": lr, "lr_schedule": "cosine to a tenth",
             "loss": "object-weighted MSE + L1", "object_weight": OBJECT_WEIGHT, "images": pool_size,
             "train_seconds": round(train_seconds, 1), "threads": torch.get_num_threads(),
             "judge_before": before, "judge_after": after, "from": str(pipeline)}
    card_path = out / "card.json"
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    card.setdefault("vae_decoder_finetunes", []).append(entry)  # each run, when one follows another
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    return entry
