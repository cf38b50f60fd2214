"""Stage 5: tomogram subvolume picking from a few labels (after SemiETPicker)."""
