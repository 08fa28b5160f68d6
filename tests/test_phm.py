import pytest
import torch

from peft_bottleneck.phm import PHMLinear, check_divisible, kronecker_sum, phm_linear_parameter_count


@pytest.mark.parametrize("n, rank, factorized", [(2, 1, True), (4, 2, True), (4, 1, False), (8, 3, True)])
def test_weight_equals_explicit_sum_of_kronecker_products(n, rank, factorized):
    torch.manual_seed(0)
    layer = PHMLinear(16, 24, phm_dim=n, rank=rank, factorized=factorized)
    rule = torch.randn(n, n, n)
    blocks = layer.blocks()
    explicit = sum(torch.kron(rule[i], blocks[i]) for i in range(n))  # (in, out)
    assert torch.allclose(layer.weight(rule), explicit.t(), atol=1e-6)
    x = torch.randn(3, 5, 16)
    assert torch.allclose(layer(x, rule), x @ explicit + layer.bias, atol=1e-5)


def test_kronecker_sum_shapes():
    assert kronecker_sum(torch.randn(4, 4, 4), torch.randn(4, 3, 5)).shape == (12, 20)


def test_parameter_count_closed_form():
    for factorized in (True, False):
        layer = PHMLinear(16, 8, phm_dim=4, rank=2, factorized=factorized, bias=True)
        counted = sum(p.numel() for p in layer.parameters())
        assert counted == phm_linear_parameter_count(16, 8, 4, 2, factorized, True)
        assert counted == (2 * (16 + 8) if factorized else 16 * 8 // 4) + 8


def test_indivisible_size_names_both_numbers():
    with pytest.raises(ValueError, match=r"`phm_dim`=3.*in_features=16.*divisible by 3"):
        PHMLinear(16, 9, phm_dim=3)
    with pytest.raises(ValueError, match="hidden_size=30"):
        check_divisible(4, hidden_size=30, bottleneck_size=8)


def test_zero_init_makes_a_zero_map():
    layer = PHMLinear(8, 8, phm_dim=2)
    layer.reset_parameters(zero=True)
    assert torch.count_nonzero(layer.weight(torch.randn(2, 2, 2))) == 0
