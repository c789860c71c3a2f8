"""facefuse: find faces, carry a source identity onto chosen target faces, blend, label the output."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("facefuse")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

__all__ = ["Pipeline", "__version__"]


def __getattr__(name: str):
    # Import lazily: `import facefuse` stays cheap, and dlib loads only when a Pipeline is wanted.
    if name == "Pipeline":
        from facefuse.pipeline import Pipeline

        return Pipeline
    raise AttributeError(name)
