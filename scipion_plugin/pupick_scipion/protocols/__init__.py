"""pupick protocols: import labels, train a model, pick (also in streaming)."""
from .protocol_import_coordinates import ProtPupickImportCoordinates
from .protocol_train import ProtPupickTrain
from .protocol_pick import ProtPupickPick
