"""How the pipeline's messages name its arguments.

The library's errors say what to change in the words of the call that was made: ``steps``, ``dtype``,
``offload`` for Python (:data:`ARGUMENT_NAMES`). A command passes its own table instead
(``pipelines/generate.py:CLI_FLAGS``), so that the same error names ``--steps``, ``--dtype``, ``--offload``.
"""

from __future__ import annotations

from collections.abc import Mapping

ARGUMENT_NAMES: dict[str, str] = {
    name: name
    for name in (
        *("text", "audio", "image", "weights", "mode", "num_images", "frames", "max_audio_seconds"),
        *("preset", "space", "decoder", "device", "dtype", "offload", "attention_slicing"),
        *("seed", "steps", "guidance", "noise_level", "batch_size", "height", "width"),
    )
}
"""Every argument a pipeline message names, by its Python name."""


def memory_hint(names: Mapping[str, str] = ARGUMENT_NAMES) -> str:
    """What to try when the GPU runs out of memory, in the caller's words."""
    return (
        f"try {names['offload']} (model CPU offload), {names['attention_slicing']}, a smaller {names['num_images']} "
        f"or {names['batch_size']}, or {names['dtype']} fp16"
    )
