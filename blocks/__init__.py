"""mvclip's built-in blocks. Importing this package registers them.

Video blocks take `forward(x, frames)` with x of shape `(B*T, C, H, W)`; text blocks take
`forward(x)` with x of shape `(B, L, C)`. Reparameterizable blocks have `reparameterize()`,
which turns them into their inference form in place (eval mode, idempotent).
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
