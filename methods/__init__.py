"""Built-in methods. Importing this package registers every method sub-package.

A method package that fails to import because an optional dependency is missing is skipped
with a warning, so the other methods stay usable.
"""

import importlib
import warnings

BUILTIN = ("patchcore", "cutpaste", "lora_mae", "vae_energy", "baselines")

for _name in BUILTIN:
    try:
        importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as err:  # sub-package absent or an optional dependency missing
        if err.name == f"{__name__}.{_name}":
            continue
        warnings.warn(f"method {_name!r} unavailable: {err}", stacklevel=1)
