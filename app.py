"""Run BK-SDM Studio: `python app.py [--host 127.0.0.1] [--port 7860]`."""

import argparse
import os

import studio  # noqa: F401  (torchvision compatibility before gradio imports transformers)
from studio.catalog import load_catalog
from studio.ui.app import build_app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    # Hosts (Hugging Face Spaces, Deta Space) say where to listen through these variables.
    env = os.environ.get
    parser.add_argument("--host", default=env("STUDIO_HOST") or env("GRADIO_SERVER_NAME") or "127.0.0.1")
    parser.add_argument("--port", type=int, default=int(env("STUDIO_PORT") or env("GRADIO_SERVER_PORT") or env("PORT") or 7860))
    parser.add_argument("--family", default=env("STUDIO_FAMILY") or "toy",
                        help="model family to generate with (default: toy, the offline toy world)")
    parser.add_argument("--device", default=env("STUDIO_DEVICE") or "cpu")
    args = parser.parse_args()
    build_app(load_catalog(), args.family, args.device).queue(max_size=16).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
