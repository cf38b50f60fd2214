"""Stage 4: PU-classifier pruning of picks from any picker (after PickerOptimizer)."""
