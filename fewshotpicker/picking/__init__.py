"""Picking: peak finding, the DoG baseline, and (later) batched window scoring."""
