"""mvclip's built-in blocks. Importing this package registers them.

Video blocks take `forward(x, frames)` with x of shape `(B*T, C, H, W)`; text blocks take
`forward(x)` with x of shape `(B, L, C)`. Reparameterizable blocks have `reparameterize()`,
which turns them into their inference form in place (eval mode, idempotent), and a constructor
argument `inference_mode=True` that builds that form directly (to load fused weights).
"""
from mvclip.blocks import (  # noqa: F401  (imported for registration)
    attention,
    conv_ffn,
    head,
    mobileone,
    patch_embed,
    rep_cpe,
    repmixer,
    st_repmixer,
    stem,
    temporal_position,
    text_blocks,
)
