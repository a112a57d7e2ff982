"""The Gradio layer: components wired to plain functions of the library."""
