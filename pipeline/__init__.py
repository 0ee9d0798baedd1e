"""DFER-CLIP on Ray: the importable library behind the `dferclip` command and the stages."""

__all__ = ["__version__"]
__version__ = "0.1.0"
