"""The closed-form solve and the token alignment, checked against their definitions."""

import pytest
import torch

from diffusers_unlearn import ClosedFormConfig
from diffusers_unlearn.methods.closed_form import moment, solve_remap
from diffusers_unlearn.prompts import Context, align


def test_remap_solves_the_normal_equations():
    torch.manual_seed(0)
    d = 16
    forget, targets, protect = torch.randn(5, d), torch.randn(5, d), torch.randn(40, d)
    config = ClosedFormConfig(lambda_protect=2.0, lambda_reg=0.1, rank=d)
    remap = solve_remap(forget, targets, moment(protect), config)
    g = (remap.up @ remap.down).double()
    # gradient of mean_f ||(I+G) c_f - c_m||^2 + lp mean_p ||G c_p||^2 + lr s ||G||^2 vanishes at the solution
    f, t, p = forget.double(), targets.double(), protect.double()
    data = moment(f) + 2.0 * moment(p)
    scale = torch.trace(data) / d
    gradient = (f @ g.T + f - t).T @ f / 5 + 2.0 * g @ moment(p) + 0.1 * scale * g
    assert gradient.abs().max() < 1e-5
    assert remap.energy == pytest.approx(1.0)


def test_edit_is_low_rank_and_truncation_reports_energy():
    torch.manual_seed(0)
    d = 32
    forget, targets = torch.randn(3, d), torch.randn(3, d)
    exact = solve_remap(forget, targets, moment(torch.randn(50, d)), ClosedFormConfig())
    assert exact.full_rank == 3 and exact.rank <= 3  # rank <= number of forget vectors
    truncated = solve_remap(forget, targets, moment(torch.randn(50, d)), ClosedFormConfig(rank=1))
    assert truncated.rank == 1 and 0 < truncated.energy < 1


def test_protection_keeps_protected_inputs_fixed():
    torch.manual_seed(0)
    d = 24
    forget, targets, protect = torch.randn(4, d), torch.randn(4, d), torch.randn(8, d)
    weak = solve_remap(forget, targets, moment(protect), ClosedFormConfig(lambda_protect=0.0, rank=d))
    strong = solve_remap(forget, targets, moment(protect), ClosedFormConfig(lambda_protect=100.0, rank=d))
    drift = lambda r: (protect @ (r.up @ r.down).T).norm() / protect.norm()  # noqa: E731
    assert drift(strong) < 0.1 * drift(weak)


@pytest.mark.parametrize("bad", [{"lambda_protect": -1}, {"lambda_reg": 0}, {"rank": 0}, {"min_energy": 1.5}])
def test_config_validation(bad):
    with pytest.raises(ValueError):
        ClosedFormConfig(**bad)


def test_alignment_pairs_suffix_and_padding():
    # BOS a photo of [pik achu] on hill EOS  vs  BOS a photo of [rabbit] on hill EOS
    forget = [0, 1, 2, 3, 10, 11, 4, 5, 9]
    target = [0, 1, 2, 3, 20, 4, 5, 9]
    pos_f, pos_t = align(forget, target, 12)
    assert pos_f == list(range(4, 12))
    assert pos_t[:2] == [4, 4]  # both concept tokens pair with the single replacement token
    assert pos_t[2:5] == [5, 6, 7]  # "on hill EOS" keep their offset
    assert pos_t[5:] == [8, 9, 10]  # padding to padding
    # concept removed entirely: its tokens pair with the last shared token
    pos_f, pos_t = align(forget, [0, 1, 2, 3, 4, 5, 9], 12)
    assert pos_t[:2] == [3, 3]


def test_context_fill_tidies_an_empty_slot():
    assert Context("a photo of {}, bold").fill("") == "a photo of, bold"
    assert Context("{} in a scene").fill("") == "in a scene"
    assert Context("a {} seven").fill("red") == "a red seven"
