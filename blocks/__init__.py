"""mvclip's built-in blocks. Importing this package registers them.

Video blocks take `forward(x, frames)` with x of shape `(B*T, C, H, W)`; text blocks take
`forward(x)` with x of shape `(B, L, C)`; side blocks take `forward(x, frames, token)` with x of shape
`(B*T, N, C)`, and the other parts of a side network (`side_stem`, `side_fusion`, `side_head` kinds) have the call
signatures written in `mvclip.contracts`. The ViT blocks keep a frame as tokens `(B*T, 1 + N, C)` (`input_layout = "tokens"`). Reparameterizable blocks have `reparameterize()`,
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
    side_block,
    side_fusion,
    side_heads,
    side_stem,
    st_repmixer,
    stem,
    temporal_position,
    text_blocks,
    vit,
)
