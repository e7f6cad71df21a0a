"""What a model family file declares, in one record: the loader reads nothing else from it.

Each family file (models/pe.py, models/ast.py, ...) ends with `FAMILY = Family(...)`; models/__init__.py
lists the files, and sensorium.processors.<name> is the family's processor (models never import it: the
loader attaches it, and the model delegates its preprocessing to `model.processor`). A family is then one file plus catalog rows, and a missing or misspelled hook fails when the
record is built, not silently at load time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from torch import nn

from sensorium.errors import CapabilityError
from sensorium.keymaps import KeyMap


@dataclass(frozen=True)
class Family:
    name: str  # the file under sensorium.models
    config_type: type
    layouts: tuple[str, ...]  # every published checkpoint layout, each with its literal key map
    detect_layout: Callable[[set[str]], str]  # the layout of a state dict, from its keys (ValueError: none)
    key_map: Callable[[str, Any], KeyMap]  # (layout, config) -> the layout's key map
    build: Callable[[Any, str], nn.Module]  # (config, layout) -> the model, built under torch.device("meta")
    # The JSON files beside a checkpoint that describe it (read by the loader), and the pure function that
    # turns them ({file name: parsed JSON}, for those present) into a config, or None when they describe
    # some other family's checkpoint.
    config_files: tuple[str, ...]
    config_from_files: Callable[[dict[str, dict], str], Any]
    # Named architectures the catalog's rows refer to (PE's configs are not stored with the checkpoints).
    archs: Mapping[str, Any] = field(default_factory=dict)
    # A decoder whose linears take int8 / int4 weights (`dtype="int8" | "int4"`, sensorium.nn.quant).
    quantizable: bool = False
    # Its models' `compile_methods` and `export_modules` export to OpenVINO / ONNX Runtime (`backend=`,
    # sensorium.nn.exported); the loader refuses a backend for the other families before reading weights.
    exportable: bool = False


def processor_of(model: nn.Module) -> Any:
    """The processor the loader attached (sensorium.processors.<family>): what turns paths, arrays and texts
    into the model's batches. Models never open files themselves."""
    if model.processor is None:
        raise CapabilityError(f"{model.name} has no processor attached (sn.load attaches one; for a model built "
                              "by hand: sensorium.processors.attach(model, checkpoint_folder))")
    return model.processor
