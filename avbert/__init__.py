"""AVBERT: parameter-efficient audio-visual Transformers (Lee et al., ICLR 2021)."""

__version__ = "0.1.0"
