"""Import path kept for existing code: the plain-PyTorch baseline lives in
:mod:`unimri.nn.plain`."""
from unimri.nn.plain import OktayAttentionGate, OktaySelectiveAttention, with_plain_modules

with_eager_attention = with_plain_modules

__all__ = ["OktayAttentionGate", "OktaySelectiveAttention", "with_eager_attention", "with_plain_modules"]
