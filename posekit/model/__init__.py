from posekit.model.bpnet import BpNetLite, FinalStage, build_model
from posekit.model.io import load_model, save_model

__all__ = ["BpNetLite", "FinalStage", "build_model", "load_model", "save_model"]
