"""The re-initialization engine: utility → selection → scheme, composed into strategies.

    from replast.reinit import restore_plasticity
    report = restore_plasticity(model, batches, strategy="targeted", utility="taylor", fraction=0.1)
"""

from replast.reinit import schemes, selection, strategies, utilities  # noqa: F401  (fill the registries)
from replast.reinit.api import restore_plasticity, utility_scores
from replast.reinit.continual import Continual
from replast.reinit.lr import AdamAges, ReinitSchedule, UpdateScaler, clear_optimizer_state
from replast.reinit.registry import (
    SCHEMES,
    SELECTIONS,
    STRATEGIES,
    UTILITIES,
    register_scheme,
    register_selection,
    register_strategy,
    register_utility,
)
from replast.reinit.report import LayerRow, ReinitReport

__all__ = [
    "SCHEMES", "SELECTIONS", "STRATEGIES", "UTILITIES", "AdamAges", "Continual", "LayerRow", "ReinitReport", "ReinitSchedule",
    "UpdateScaler", "clear_optimizer_state", "register_scheme", "register_selection", "register_strategy",
    "register_utility", "restore_plasticity", "utility_scores",
]
