"""Names shared by the plugin's modules."""

# Scipion variable: command that activates the environment holding the engine,
# for example "conda activate fewshot-cuda". Empty: the environment that
# `scipion3 installb fewshotpicker` made, where it exists, else Scipion's own
# interpreter (the default install puts both in one environment).
FEWSHOTPICKER_ENV_ACTIVATION = "FEWSHOTPICKER_ENV_ACTIVATION"
DEFAULT_ENV_ACTIVATION = ""

# `scipion3 installb fewshotpicker`: a Python venv under EM_ROOT/fewshotpicker-<version>/
# holding the engine and its torch; the marker file is written only once it works.
ENGINE_PACKAGE = "fewshotpicker"
ENGINE_VENV = "venv"
ENGINE_INSTALLED = "fewshotpicker_installed"

ENGINE_PROGRAM = "fewshotpicker"

# Coordinate attributes written by our protocols (RELION export keeps the last three)
SCORE_ATTR = "_fewshotScore"
PRUNE_SCORE_ATTR = "_fewshotPruneScore"
RELION_ATTRS = ("_rlnClassNumber", "_rlnAutopickFigureOfMerit", "_rlnAnglePsi")

# Kinds of FewShotModel
MODEL_PRETRAINED = "pretrained"
MODEL_FINETUNED = "finetuned"
MODEL_PRUNER = "pruner"
MODEL_TOMO = "tomo"
