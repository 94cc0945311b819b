"""Every registered block: fused equals unfused on random inputs with randomized BatchNorm statistics.

The block list comes from the registry, so a newly registered block is covered without editing this file.
"""
import pytest
import torch

import mvclip
from mvclip.registry import REGISTRY
from mvclip.testing import check_block_fusion

REL_TOL = 1e-5  # float32, relative to the output's largest magnitude


@pytest.mark.parametrize("frames", [1, 3, 8])
@pytest.mark.parametrize("name", mvclip.list_blocks())
def test_fused_block_matches_unfused(name, frames):
    check = check_block_fusion(name, frames=frames)
    assert check.report.max_rel_diff <= REL_TOL, f"{name}: fused differs by {check.report}"
    assert check.idempotent, f"{name}: a second reparameterize() changed the block"
    assert check.params_fused <= check.params_unfused
    if REGISTRY.get(name).reparameterizable:
        assert check.batchnorms_left == 0, f"{name}: BatchNorm left after reparameterize()"


def test_randomization_makes_branches_matter():
    """Guard against a check that cannot fail: a block with a deliberately wrong fold must be caught."""
    from mvclip.blocks.repmixer import RepMixer

    class WrongRepMixer(RepMixer):
        def reparameterize(self):
            super().reparameterize()
            self.reparam_conv.bias.data.zero_()  # drop the folded BatchNorm shifts

    @mvclip.register_block("_wrong_repmixer_for_test")
    class Wrong(torch.nn.Module):
        """Test-only block with a broken fold."""

        def __init__(self, dim: int):
            super().__init__()
            self.mixer = WrongRepMixer(dim)

        def forward(self, x, frames=1):
            return self.mixer(x)

        def reparameterize(self):
            self.mixer.reparameterize()

    try:
        check = check_block_fusion("_wrong_repmixer_for_test")
        assert check.report.max_rel_diff > 1e-3
    finally:
        REGISTRY._entries.pop("_wrong_repmixer_for_test")


def test_fusion_requires_eval_mode():
    block = mvclip.build_block({"block": "repmixer", "dim": 16})
    with pytest.raises(RuntimeError, match="eval mode"):
        from mvclip.fusion import reparameterize_model

        reparameterize_model(block)
