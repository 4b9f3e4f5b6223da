"""The reported overlap metrics, in table order (no torch import: report generators read it)."""

METRIC_NAMES = ("IoU", "DSC", "Precision", "Recall")
