"""torch.library custom ops of unimri: one module per fused op.

Each op is an opaque ``torch.library.custom_op`` with ``register_fake`` and
``register_autograd`` so that ``torch.compile(fullgraph=True)`` traces it with no graph
break; its body picks the kernel with :func:`unimri_kernels.dispatch.backend_for`. Each
op's public function checks its inputs once and asks :func:`unimri_kernels.dispatch.route`
whether to run the custom op or, on the "direct" route, its ``Direct*`` autograd Function.
"""
from unimri_kernels.ops import (  # noqa: F401
    attention_gate, attention_gates, batch_norm_relu, max_pool, pointwise_conv, unified_focal_loss,
)
