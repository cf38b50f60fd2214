"""fewshotpicker: the engine of scipion-em-fewshotpicker.

Few-shot cryo-EM particle picking. This package never imports Scipion
(pyworkflow, pwem, tomo); the Scipion plugin runs it as a subprocess.
"""
__version__ = "0.1.0"
