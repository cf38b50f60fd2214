"""Input and output: MRC images and volumes, coordinate files, atomic writes."""
