"""Networks: the masked autoencoder (``mae``), its frozen scoring copy (``inference``) and the
dense student that proposes picks (``student``)."""
