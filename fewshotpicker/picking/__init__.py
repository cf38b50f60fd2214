"""Picking: batched window scoring, peaks, per-micrograph cutoffs, the student cascade, the run
over many micrographs and devices, and the DoG baseline."""
