"""The plugin's protocols, one per file."""
from .protocol_import_model import FewShotProtImportModel
from .protocol_pick import FewShotProtPick
from .protocol_pick_tomo import FewShotProtPickTomo
from .protocol_pretrain import FewShotProtPretrain
from .protocol_prune import FewShotProtPrune
from .protocol_train import FewShotProtTrain
