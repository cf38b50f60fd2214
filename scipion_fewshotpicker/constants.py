"""Names shared by the plugin's modules."""

# Scipion variable: command that activates the environment holding the engine,
# for example "conda activate fewshot-cuda". Empty: the engine runs in
# Scipion's own interpreter (the default install puts both in one environment).
FEWSHOTPICKER_ENV_ACTIVATION = "FEWSHOTPICKER_ENV_ACTIVATION"
DEFAULT_ENV_ACTIVATION = ""

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
