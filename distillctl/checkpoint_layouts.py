"""Where other training scripts keep a model's weights inside the checkpoints they save, so that a teacher trained
with timm's train.py, torchvision's reference scripts, Lightning or plain DDP loads as it is, with no conversion.

Every layout is read with torch's weights-only unpickler: nothing in a checkpoint runs code.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Collection, Mapping
from typing import Any

# The entry of a checkpoint dict that holds the weights: timm's train.py and Lightning ('state_dict'), the PyTorch
# tutorials ('model_state_dict'), torchvision's and DeiT's reference scripts ('model').
WEIGHTS_ENTRIES = ("state_dict", "model_state_dict", "model")
# Plain-data classes such checkpoints store beside the weights (timm's and torchvision's scripts save their
# command-line `args`). A Namespace unpickles by setting attributes: it runs no code of the file's choosing.
SAFE_GLOBALS = [argparse.Namespace]


def weights_entry(loaded: Any) -> Any:
    """The weights a loaded checkpoint holds: its weights entry when it is a training script's dict, else itself."""
    if isinstance(loaded, Mapping):
        for entry in WEIGHTS_ENTRIES:
            if isinstance(loaded.get(entry), Mapping):
                return loaded[entry]
    return loaded


def without_prefix(state: Mapping[str, Any], wanted: Collection[str]) -> Mapping[str, Any]:
    """`state` with the key prefix removed under which it holds exactly the `wanted` keys: DDP's `module.`,
    torch.compile's `_orig_mod.`, a Lightning module's attribute (`model.`, beside its other modules). The state as
    it is when its keys are already the wanted ones, or when no prefix gives them all."""
    wanted = set(wanted)
    if wanted <= state.keys():
        return state
    prefixes = Counter(key[:i + 1] for key in state for i, char in enumerate(key) if char == "." and key[i + 1:] in wanted)
    for prefix, _ in prefixes.most_common():
        inner = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
        if inner.keys() == wanted:
            return inner
    return state
