"""The scoring modes, one module each, by the name ``ChoiceScorer(mode=...)`` takes."""

from __future__ import annotations

from bslora_pyro.scoring.modes.base import ScoringMode
from bslora_pyro.scoring.modes.encoder import EncoderMode
from bslora_pyro.scoring.modes.letter import LetterMode
from bslora_pyro.scoring.modes.loglik import LoglikMode, MeanLoglikMode

SCORING_MODES: dict[str, ScoringMode] = {
    mode.name: mode for mode in (LetterMode(), LoglikMode(), MeanLoglikMode(), EncoderMode())
}
MODES = tuple(SCORING_MODES)  # the names, in registry order

__all__ = ["MODES", "SCORING_MODES", "EncoderMode", "LetterMode", "LoglikMode", "MeanLoglikMode", "ScoringMode"]
