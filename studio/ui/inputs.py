"""Input components whose bad values are refused naming the field.

Gradio checks an input (type, range, choices) before a handler sees it, and its
messages do not say which field was wrong ("Value -2 is less than minimum value
1.", or a blank "Error" for a wrong type). These are gradio's own components,
as templates (`is_template`: the page draws the parent), whose `preprocess`
puts the label in front of any such error.

`ChoiceList` is a CheckboxGroup whose values are checked by the handler instead of
against the choices the page was built with: a visitor's own students and jobs
join the choices after the page is built, and an API client, which never loads
the page, could not name them otherwise.
"""

import base64
import binascii
import io
import warnings
from pathlib import Path

import gradio as gr
from PIL import Image as PILImage

from studio.images import ImageTooLarge, check_pixels
from studio.ui.hosting import without_paths


def _file_names(payload) -> list[str] | None:
    """The names an upload had on the visitor's machine (never where the server keeps it), or None if not a file."""
    files = getattr(payload, "root", None)
    files = files if isinstance(files, list) else [payload]
    if not all(getattr(f, "path", None) is not None or getattr(f, "url", None) for f in files):
        return None
    return [getattr(f, "orig_name", None) or Path(getattr(f, "path", None) or "upload").name for f in files]


def _shown(payload) -> str:
    names = _file_names(payload)
    shown = repr(names[0] if len(names) == 1 else names) if names is not None else repr(payload)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _pixels_in_header(payload, label: str) -> None:
    """An uploaded image's size from its header, refused over the studio's pixel limit before gradio decodes it."""
    path, url = getattr(payload, "path", None), getattr(payload, "url", None) or ""
    if not path and not url.startswith("data:"):
        return
    try:
        if not path:  # an inline image (a data URL), which gradio would decode in full
            path = io.BytesIO(base64.b64decode(url.partition(",")[2]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            with PILImage.open(path) as image:
                check_pixels(image, label)
    except ImageTooLarge as problem:
        raise gr.Error(str(problem)) from None
    except (OSError, SyntaxError, ValueError, binascii.Error, PILImage.DecompressionBombError):
        pass  # not an image PIL reads: gradio's preprocess (or the handler) says so


def _labelled(base, accepts: tuple = (), what: str = "", check=None):
    """`base` whose errors name its label; with `accepts`, a value of another type (None aside) is refused too,
    where gradio would turn it into text or a bool; `check(payload, label)` runs before gradio's preprocess."""
    class Labelled(base):
        is_template = True

        def preprocess(self, payload):
            label = self.label or "input"
            if accepts and payload is not None and (not isinstance(payload, accepts) or isinstance(payload, bool)
                                                    and bool not in accepts):
                raise gr.Error(f"{label}: must be {what}, got {_shown(payload)}")
            if check is not None:
                check(payload, label)
            try:
                return super().preprocess(payload)
            except Exception as error:
                raise gr.Error(f"{label}: {_shown(payload)} is not accepted ({without_paths(str(error))})") from None

    Labelled.__name__ = Labelled.__qualname__ = base.__name__
    return Labelled


def _open_choices(info: dict) -> dict:
    """An API schema without its `enum`: the choices the page was built with become examples, so an API or MCP
    client may name any value the handler accepts (a visitor's own jobs and students, which no page lists ahead;
    gradio's MCP server refuses arguments outside an enum)."""
    info = dict(info)
    if info.get("type") == "array":
        info["items"] = _open_choices(info["items"])
        return info
    choices = info.pop("enum", None)
    if choices:
        info["examples"] = choices
    return info


class Dropdown(_labelled(gr.Dropdown)):
    """A dropdown whose API schema, with `allow_custom_value`, lists its choices as examples, not as the only values."""

    is_template = True

    def api_info(self) -> dict:
        info = super().api_info()
        return _open_choices(info) if self.allow_custom_value else info


Checkbox = _labelled(gr.Checkbox, (bool,), "true or false")
CheckboxGroup = _labelled(gr.CheckboxGroup)
File = _labelled(gr.File)
Image = _labelled(gr.Image, check=_pixels_in_header)
Number = _labelled(gr.Number, (int, float), "a number")
Radio = _labelled(gr.Radio, (str,), "one of the choices")
Slider = _labelled(gr.Slider, (int, float), "a number")
Textbox = _labelled(gr.Textbox, (str,), "text")


class ChoiceList(gr.CheckboxGroup):
    """A list of names, any of which the handler may refuse (membership is not checked here, nor by the API schema)."""

    is_template = True

    def api_info(self) -> dict:
        return _open_choices(super().api_info())

    def preprocess(self, payload):
        if not isinstance(payload, list) or not all(isinstance(item, str) for item in payload):
            raise gr.Error(f"{self.label or 'input'}: must be a list of names, got {_shown(payload)}")
        return list(payload)
