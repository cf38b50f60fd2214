"""Data: densities, CTF, synthetic micrographs and tomograms, previews."""
