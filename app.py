"""Run BK-SDM Studio: `python app.py [--host 127.0.0.1] [--port 7860]`."""

import argparse
import os
from dataclasses import fields

import studio  # noqa: F401  (torchvision compatibility before gradio imports transformers)
import studio.toy  # noqa: F401  (the toy world plugs in its data source and judge)
from studio.models.catalog import load_catalog
from studio.models.downloads import preload_family
from studio.options import add_arguments, from_args
from studio.progress import TqdmProgress
from studio.ui.app import build_app
from studio.ui.doors import launch_options
from studio.ui.fairness import queue_app
from studio.ui.hosting import Hosting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    # Hosts (Hugging Face Spaces, Deta Space) say where to listen through these variables.
    env = os.environ.get
    parser.add_argument("--host", default=env("STUDIO_HOST") or env("GRADIO_SERVER_NAME") or "127.0.0.1")
    parser.add_argument("--port", type=int, default=int(env("STUDIO_PORT") or env("GRADIO_SERVER_PORT") or env("PORT") or 7860))
    parser.add_argument("--family", default=env("STUDIO_FAMILY") or "toy",
                        help="model family to generate with (default: toy, the offline toy world)")
    parser.add_argument("--device", default=env("STUDIO_DEVICE") or "cpu")
    parser.add_argument("--data-dir", default=env("STUDIO_DATA_DIR") or "studio-data",
                        help="where training jobs and generated images live (default: ./studio-data)")
    parser.add_argument("--queue-size", type=int, default=int(env("STUDIO_QUEUE_SIZE") or 16),
                        help="requests waiting beyond this are turned away with a 'queue is full' message")
    parser.add_argument("--mcp", action=argparse.BooleanOptionalAction,
                        default=(env("STUDIO_MCP") or "").lower() in ("1", "true", "yes"),
                        help="also serve the app's tools over MCP at /gradio_api/mcp/ (or STUDIO_MCP=1)")
    hosting = parser.add_argument_group("hosting (public mode: --public, or the SPACE_ID variable)")
    add_arguments(hosting, Hosting)
    for f in fields(Hosting):  # every hosting flag can also come from a STUDIO_<NAME> variable
        if (value := env(f"STUDIO_{f.name.upper()}")) is not None:
            parser.set_defaults(**{f.name: value.lower() in ("1", "true", "yes") if f.type in (bool, bool | None)
                                   else f.type(value)})
    args = parser.parse_args()
    hosting = from_args(Hosting, args)
    catalog = load_catalog()
    if hosting.preload:  # the operator's downloads, in bytes, before anyone is served
        with TqdmProgress("B") as bars:
            names = preload_family(catalog, args.family, bars, int(hosting.download_disk_gb * 1024**3))
        print(f"preloaded: {', '.join(names)}")
    app = build_app(catalog, args.family, args.device, args.data_dir, hosting)
    queue_app(app, hosting, args.queue_size)
    app.launch(server_name=args.host, server_port=args.port, mcp_server=args.mcp, prevent_thread_lock=True,
               **launch_options(hosting))
    if args.mcp and not app.mcp_server:  # gradio only prints why its MCP server did not start
        app.close()
        raise SystemExit(f"--mcp: the MCP server did not start: {getattr(app, 'mcp_error', 'unknown error')}")
    app.block_thread()


if __name__ == "__main__":
    main()
