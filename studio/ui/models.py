"""The Models tab: the catalogue."""

import gradio as gr

from studio.models.catalog import Catalog

HEADERS = ["name", "role", "family", "teacher", "arch", "source", "description"]


def catalogue_rows(catalog: Catalog) -> list[list]:
    return [[e.name, e.role, e.family, e.teacher or "", e.arch or "", e.source, e.description] for e in catalog]


def build(catalog: Catalog) -> None:
    with gr.Tab("Models"):
        gr.Dataframe(value=catalogue_rows(catalog), headers=HEADERS, interactive=False)
