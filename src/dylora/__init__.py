"""dylora: DyLoRA (dynamic, search-free low-rank adaptation) for any Hugging Face model.

    from dylora import AdapterConfig, add_adapters, set_rank, export_peft
"""

from dylora.adapters import *  # noqa: F401,F403
from dylora.adapters import __all__ as _adapters_all

__version__ = "0.1.0"
__all__ = list(_adapters_all)
