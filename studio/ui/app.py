"""The studio's Gradio app: one module per tab, composed here.

Each tab module lays out its components and wires them to plain functions;
`studio/ui/common.py` holds what they share (state, errors, the job monitor).
"""

from pathlib import Path

import gradio as gr

from studio.models.catalog import Catalog
from studio.ui import compare, dreambooth, evaluate, img2img, models, train
from studio.ui.common import Studio
from studio.ui.hosting import Hosting


def build_app(catalog: Catalog, family: str = "toy", device: str = "cpu", data_dir: Path | str = "studio-data",
              hosting: Hosting | None = None) -> gr.Blocks:
    """The app; `hosting` says local (the default: one user) or public (visitors apart, quotas, expiry)."""
    studio = Studio.create(catalog, family, device, Path(data_dir), hosting)
    if studio.hosting.public:
        studio.workspaces.clean_periodically()  # expired work goes now and every hour
    # Gradio's copies of uploads and outputs: checked hourly, deleted after a day (jobs keep their own copies).
    with gr.Blocks(title="BK-SDM Studio", delete_cache=(3600, 86400)) as app:
        gr.Markdown("# BK-SDM Studio\nCompress Stable Diffusion by block removal (BK-SDM, arXiv 2305.15798) "
                    "and see what it costs.")
        if studio.hosting.public and studio.hosting.sign_in:
            with gr.Row():
                gr.LoginButton()
                gr.Markdown("Signed in, your jobs and images follow your Hugging Face account to any browser; as a "
                            "guest they stay with this browser (a cookie).")
        shared = compare.build(app, studio)
        img2img.build(app, studio, shared)
        train.build(app, studio)
        dreambooth.build(app, studio)
        evaluate.build(app, studio)
        models.build(catalog)
    return app
