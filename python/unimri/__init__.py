"""unimri: class-imbalance-robust segmentation for medical images.

Sub-packages: ``losses`` (Unified Focal loss family), ``nn`` (attention gates),
``models`` (five backbones), ``metrics``, ``data``, ``train`` and the ``unimri`` command.
"""

__version__ = "0.1.0"
