"""Model weights: where they live and how they load. The built-in stack ships inside pip packages;
the learned ONNX models are listed in the registry, kept by a ModelStore and run by a SessionPool."""

from facefuse.models.registry import ModelSpec, Registry, default_registry
from facefuse.models.sessions import ProviderFallbackWarning, SessionPool
from facefuse.models.store import ModelStore, default_models_dir

__all__ = [
    "ModelSpec",
    "ModelStore",
    "ProviderFallbackWarning",
    "Registry",
    "SessionPool",
    "default_models_dir",
    "default_registry",
]
