"""Viewers: figures the engine drew (loss curves, picks on the score map, score histograms,
the pruning gallery, tomogram slices with picks)."""
from .viewer_curves import FewShotCurvesViewer
from .viewer_picks import FewShotPicksViewer
from .viewer_prune import FewShotPruneViewer
from .viewer_tomo import FewShotTomoPicksViewer
