__version__ = "0.1.0"

__all__ = ["Runtime", "Prediction", "ModelInfo"]


def __getattr__(name: str):
    # the public inference API, imported on first use so ``import edge_sdfa`` stays light
    if name in __all__:
        from edge_sdfa import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'edge_sdfa' has no attribute {name!r}")
