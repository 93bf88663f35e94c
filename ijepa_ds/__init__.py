"""ijepa-ds: a DeepSpeed-based trainer for I-JEPA (Assran et al., CVPR 2023)."""

__version__ = "0.1.0"
