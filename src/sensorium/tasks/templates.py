"""Prompt templates for zero-shot classification; "{}" is replaced by the label.

"imagenet" is OpenAI CLIP's ensemble of 80 ImageNet templates and "default" its 7-template subset chosen in
OpenAI's prompt-engineering notebook (both as distributed with open_clip, MIT licence). The original PE
protocol averages the normalised text embeddings of all templates of a label.
"""

from __future__ import annotations

from pathlib import Path

IMAGENET = (
    'a bad photo of a {}.',
    'a photo of many {}.',
    'a sculpture of a {}.',
    'a photo of the hard to see {}.',
    'a low resolution photo of the {}.',
    'a rendering of a {}.',
    'graffiti of a {}.',
    'a bad photo of the {}.',
    'a cropped photo of the {}.',
    'a tattoo of a {}.',
    'the embroidered {}.',
    'a photo of a hard to see {}.',
    'a bright photo of a {}.',
    'a photo of a clean {}.',
    'a photo of a dirty {}.',
    'a dark photo of the {}.',
    'a drawing of a {}.',
    'a photo of my {}.',
    'the plastic {}.',
    'a photo of the cool {}.',
    'a close-up photo of a {}.',
    'a black and white photo of the {}.',
    'a painting of the {}.',
    'a painting of a {}.',
    'a pixelated photo of the {}.',
    'a sculpture of the {}.',
    'a bright photo of the {}.',
    'a cropped photo of a {}.',
    'a plastic {}.',
    'a photo of the dirty {}.',
    'a jpeg corrupted photo of a {}.',
    'a blurry photo of the {}.',
    'a photo of the {}.',
    'a good photo of the {}.',
    'a rendering of the {}.',
    'a {} in a video game.',
    'a photo of one {}.',
    'a doodle of a {}.',
    'a close-up photo of the {}.',
    'a photo of a {}.',
    'the origami {}.',
    'the {} in a video game.',
    'a sketch of a {}.',
    'a doodle of the {}.',
    'a origami {}.',
    'a low resolution photo of a {}.',
    'the toy {}.',
    'a rendition of the {}.',
    'a photo of the clean {}.',
    'a photo of a large {}.',
    'a rendition of a {}.',
    'a photo of a nice {}.',
    'a photo of a weird {}.',
    'a blurry photo of a {}.',
    'a cartoon {}.',
    'art of a {}.',
    'a sketch of the {}.',
    'a embroidered {}.',
    'a pixelated photo of a {}.',
    'itap of the {}.',
    'a jpeg corrupted photo of the {}.',
    'a good photo of a {}.',
    'a plushie {}.',
    'a photo of the nice {}.',
    'a photo of the small {}.',
    'a photo of the weird {}.',
    'the cartoon {}.',
    'art of the {}.',
    'a drawing of the {}.',
    'a photo of the large {}.',
    'a black and white photo of a {}.',
    'the plushie {}.',
    'a dark photo of a {}.',
    'itap of a {}.',
    'graffiti of the {}.',
    'a toy {}.',
    'itap of my {}.',
    'a photo of a cool {}.',
    'a photo of a small {}.',
    'a tattoo of the {}.',
)

DEFAULT = (
    'itap of a {}.',
    'a bad photo of the {}.',
    'a origami {}.',
    'a photo of the large {}.',
    'a {} in a video game.',
    'art of the {}.',
    'a photo of the small {}.',
)

# For PE-AV's audio and audio-visual heads (its captions describe sounds); the bare label comes first.
SOUND = ("{}", "the sound of {}.", "a recording of {}.")

BUILTIN = {"default": DEFAULT, "imagenet": IMAGENET, "photo": ("a photo of a {}.",), "none": ("{}",), "sound": SOUND}


def check_template(template: str) -> str | None:
    """Why a template cannot be used (None when it can): exactly one "{}" for the label and no other
    replacement field ("{{" and "}}" stand for literal braces)."""
    import string

    if not isinstance(template, str):
        return f"templates must be strings, got a {type(template).__name__}"
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)
                  if name is not None]
    except ValueError as err:  # a lone "{" or "}"
        return f"{err} (write {{{{ and }}}} for literal braces)"
    if len(fields) != 1:
        return f"needs exactly one {{}} for the label, has {len(fields)} replacement fields"
    if fields[0] != ("", "", None):
        name, spec, conversion = fields[0]
        shown = "{" + name + ("!" + conversion if conversion else "") + (":" + spec if spec else "") + "}"
        return f"the label goes in a plain {{}}, not {shown}"
    return None


def check_templates(templates, origin: str = "templates") -> tuple[str, ...]:
    """Templates as a tuple, each checked (ValueError names the bad one and why)."""
    if isinstance(templates, str):
        raise TypeError("templates must be a tuple of strings (or a set name for load_templates)")
    templates = tuple(templates)
    if not templates:
        raise ValueError(f"{origin}: no templates")
    for template in templates:
        problem = check_template(template)
        if problem:
            raise ValueError(f"{origin}: template {template!r}: {problem}, e.g. 'a photo of a {{}}.'")
    return templates


def load_templates(spec: str | None) -> tuple[str, ...]:
    """A built-in set by name (default, imagenet, photo, none, sound) or a UTF-8 file with one template per line."""
    if spec is None:
        return DEFAULT
    if spec in BUILTIN:
        return BUILTIN[spec]
    path = Path(spec)
    if not path.is_file():
        names = ", ".join(BUILTIN)
        raise ValueError(f"--templates {spec}: not a file and not a built-in set ({names})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"--templates {spec}: not a UTF-8 text file (byte 0x{err.object[err.start]:02x} at offset "
                         f"{err.start})") from None
    templates = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not templates:
        raise ValueError(f"{spec}: no templates in this file")
    return check_templates(templates, spec)
