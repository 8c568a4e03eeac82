"""The built-in demo task (:mod:`.task`): its data (``demo://sft|preference|prompts``, :mod:`.data`), its
tiny models (``demo://tiny-llama``, ``demo://tiny-deberta``, :mod:`.models`) and its gold judge
(:mod:`.judge`), plugged into the data loader, model loading and evaluation through the entry points
of ``pyproject.toml`` (:mod:`kuberlhf.plugins`)."""
