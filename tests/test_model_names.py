"""Tests for kdcore.model_names: architecture names, MLP width syntax and fit checks, all without building a model.

That this module never imports torch is checked in tests/test_imports.py; building each name is tests/test_models.py.
"""

from __future__ import annotations

import re

import pytest

from kdcore.errors import ModelError
from kdcore.model_names import (ARCH_NAMES, ARCHS, MAX_MLP_WIDTH, MLP_PRESETS, check_fits, fits, mlp_widths, needs_image,
                                validate_arch)

CONV_NAMES = [name for name in ARCH_NAMES if ARCHS[name].needs_image]


@pytest.mark.parametrize("arch", [*ARCH_NAMES, "mlp:8", "mlp:128,64", f"mlp:{MAX_MLP_WIDTH}"])
def test_valid_names(arch):
    validate_arch(arch)
    assert ARCHS.get(arch, ARCHS["mlp"]).description


def test_every_preset_mlp_is_registered_and_no_conv_net_has_widths():
    assert set(MLP_PRESETS) <= set(ARCH_NAMES)
    assert all(not ARCHS[name].needs_image for name in MLP_PRESETS)
    assert all(mlp_widths(name) is None for name in CONV_NAMES)


@pytest.mark.parametrize("arch, widths", [("mlp", (512, 256)), ("mlp-small", (64,)), ("mlp-tiny", (16,)),
                                          ("mlp:8", (8,)), ("mlp:128,64,32", (128, 64, 32))])
def test_mlp_widths(arch, widths):
    assert mlp_widths(arch) == widths and not needs_image(arch)


@pytest.mark.parametrize("arch", ["mlp:", "mlp:0", "mlp:abc", "mlp:128,", "mlp:-4", "mlp: 64", "mlp:+64", "mlp:6_4",
                                  f"mlp:{MAX_MLP_WIDTH + 1}"])
def test_malformed_mlp_widths_are_refused_with_the_syntax(arch):
    with pytest.raises(ModelError, match=rf"^bad MLP widths in '{re.escape(arch)}': expected mlp:W1,W2,\.\.\. with integers "
                                         rf"1\.\.{MAX_MLP_WIDTH}, e\.g\. mlp:128,64$"):
        validate_arch(arch)


@pytest.mark.parametrize("call", [validate_arch, needs_image, lambda arch: fits(arch, (1, 28, 28)),
                                  lambda arch: check_fits(arch, (1, 28, 28))])
def test_an_unknown_name_lists_the_valid_ones(call):
    with pytest.raises(ModelError, match=r"^unknown architecture 'resnet1000'; valid: mlp, mlp-small, .*resnet20.*, "
                                         r"mlp:W1,W2,\.\.\. \(e\.g\. mlp:128,64\), tiny-transformer:LAYERS,WIDTH, "
                                         r"hf:<model id or folder> \(a Hugging Face text encoder\), "
                                         r"or timm:<name> \(a timm model\)$"):
        call("resnet1000")


@pytest.mark.parametrize("arch", CONV_NAMES)
def test_conv_nets_need_images_of_at_least_8_pixels(arch):
    assert needs_image(arch)
    assert fits(arch, (1, 8, 8)) and fits(arch, (3, 32, 32))
    assert not fits(arch, (2,)) and not fits(arch, (1, 4, 4)) and not fits(arch, (64,))
    with pytest.raises(ModelError, match=rf"^{arch} needs image input; .*\(2,\) — use an MLP: mlp, mlp-small, mlp-tiny"):
        check_fits(arch, (2,))
    with pytest.raises(ModelError, match=rf"^{arch} needs images at least 8x8; .*\(1, 4, 4\)"):
        check_fits(arch, (1, 4, 4))


@pytest.mark.parametrize("arch", [*MLP_PRESETS, "mlp:8,4"])
def test_mlps_take_any_shape(arch):
    assert all(fits(arch, shape) for shape in [(2,), (1, 4, 4), (3, 32, 32), (1, 1, 1)])
    assert not fits(arch, (128, 30522))  # (tokens, vocabulary): text, which an MLP does not read


@pytest.mark.parametrize("shape", [(), (0,), (1, 0, 8), (2.5,), (-1, 8, 8)])
def test_a_malformed_input_shape_is_refused(shape):
    with pytest.raises(ModelError, match=r"^input shape must be \(C, H, W\), \(D,\) or \(tokens, vocabulary\) "
                                         r"with positive sizes"):
        check_fits("mlp", shape)
