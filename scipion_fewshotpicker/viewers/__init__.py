"""Viewers: figures the engine drew (loss curves, picks on the score map, score histograms,
the pruning gallery)."""
from .viewer_curves import FewShotCurvesViewer
from .viewer_picks import FewShotPicksViewer
from .viewer_prune import FewShotPruneViewer
