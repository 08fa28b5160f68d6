import pytest
import torch
from transformers.activations import ACT2FN

from peft_bottleneck.activations import IN_PLACE, ALLOWED_NON_LINEARITIES, check_non_linearity, get_activation


@pytest.mark.parametrize("name", ALLOWED_NON_LINEARITIES)
def test_every_activation_maps_zero_to_zero(name):
    # the mixed-batch forward zero-pads narrower bottlenecks and relies on f(0) == 0
    assert torch.equal(get_activation(name)(torch.zeros(3)), torch.zeros(3))


@pytest.mark.parametrize("name", ["relu", "gelu", "gelu_new", "silu", "swish", "tanh"])
def test_activations_match_transformers(name):
    x = torch.linspace(-4, 4, 101)
    assert torch.allclose(get_activation(name)(x), ACT2FN[name](x), atol=1e-6)


def test_names_are_case_insensitive_and_checked():
    assert check_non_linearity("ReLU") == "relu"
    with pytest.raises(ValueError, match="`non_linearity` must be one of"):
        check_non_linearity("mish")


@pytest.mark.parametrize("name", ALLOWED_NON_LINEARITIES)
def test_in_place_forms_compute_the_same_and_overwrite_only_where_they_exist(name):
    x = torch.randn(4, 7)
    expected = get_activation(name)(x.clone())
    given = x.clone()
    out = get_activation(name, in_place=True)(given)
    assert torch.equal(out, expected)
    assert (out.data_ptr() == given.data_ptr()) == (name in IN_PLACE)
