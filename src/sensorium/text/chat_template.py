"""Chat templates shipped with a checkpoint, rendered with jinja2 the way transformers renders them.

The environment matches transformers' `apply_chat_template`: a sandbox, `trim_blocks` and `lstrip_blocks`,
loop controls, and the helpers templates call (`raise_exception`, `strftime_now`, `namespace`, a JSON `tojson`).
Templates only look at message structure and text, so media values are replaced by a placeholder first.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json", "processor_config.json", "tokenizer_config.json")


def _plain(value):
    """JSON-like data for the template: media objects (arrays, tensors, paths) become a placeholder string."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return "<media>"


class ChatTemplate:
    def __init__(self, source: str):
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        env.globals["namespace"] = jinja2.utils.Namespace
        self.source = source
        self._template = env.from_string(source)

    @classmethod
    def from_folder(cls, folder: str | Path) -> "ChatTemplate | None":
        """The template a checkpoint folder ships: chat_template.jinja, or a "chat_template" field of
        chat_template.json, processor_config.json or tokenizer_config.json (in that order)."""
        folder = Path(folder)
        for name in TEMPLATE_FILES:
            path = folder / name
            if not path.is_file():
                continue
            if name.endswith(".jinja"):
                return cls(path.read_text(encoding="utf-8"))
            template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
            if isinstance(template, str):
                return cls(template)
        return None

    def render(self, messages: list[dict], add_generation_prompt: bool = True, **variables) -> str:
        return self._template.render(messages=_plain(messages), add_generation_prompt=add_generation_prompt, **variables)
