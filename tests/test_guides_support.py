"""KeepInData: the distance from planned paths to where the data has been, learned from the
data alone, on an L of visited positions (two unit-wide corridors meeting at the origin)."""

import numpy as np
import pytest
import torch

from diffplan.guidance import Compose, GuideContext
from diffplan.spec import TrajectorySpec
from guides import Constraint, KeepInData


@pytest.fixture(scope="module")
def corridors():
    """Visited positions: x in [0, 3] along y in [0, 0.5], and y in [0, 3] along x in [0, 0.5]."""
    rng = np.random.default_rng(0)
    along_x = np.c_[rng.uniform(0, 3, 5000), rng.uniform(0, 0.5, 5000)]
    along_y = np.c_[rng.uniform(0, 0.5, 5000), rng.uniform(0, 3, 5000)]
    return np.concatenate([along_x, along_y])


def test_distance_is_zero_on_the_data_and_grows_away_from_it(corridors):
    cost = KeepInData(corridors, radius=0.2, cell=0.05)
    points = torch.tensor([[1.0, 0.25], [0.25, 2.5], [2.0, 2.0], [1.0, 1.0], [5.0, 0.25]])
    # (2, 2) and (1, 1) lie 1.5 and 0.5 from the nearest corridor; (5, 0.25) is 2 beyond the
    # data's end, off the grid.
    expected = torch.tensor([0.0, 0.0, 1.5, 0.5, 2.0])
    assert torch.allclose(cost.distance(points), expected, atol=0.05)
    # Off the diagonal one corridor is nearest: the gradient points straight away from it.
    away = torch.tensor([[2.0, 1.3], [1.3, 2.2]], requires_grad=True)
    cost.distance(away).sum().backward()
    assert torch.allclose(away.grad, torch.tensor([[0.0, 1.0], [1.0, 0.0]]), atol=0.3)
    # A plan holding NaN costs NaN, which Constraint reports as a one-line error.
    assert cost.distance(torch.tensor([[float("nan"), 0.0]])).isnan().all()


def test_a_path_that_cuts_the_corner_violates_and_ranks_below_the_corridors(corridors):
    """The two plans have the same end points; only the one along the corridors stays where the
    data went. Its cost is 0, the diagonal's is the excess distance of its segment samples."""
    spec = TrajectorySpec(obs_dim=2, act_dim=1, horizon=3)
    plans = torch.zeros(2, 3, 3)
    plans[0, :, 1:] = torch.tensor([[2.5, 0.25], [1.4, 1.4], [0.25, 2.5]])  # across the gap
    plans[1, :, 1:] = torch.tensor([[2.5, 0.25], [0.25, 0.25], [0.25, 2.5]])  # along the L
    cost = KeepInData(corridors, radius=0.2)
    violation = cost(spec.observations(plans), spec.actions(plans))
    assert violation[1] == 0.0 and violation[0] > 3.0
    # Only the planned states, not the segments: the diagonal's middle state alone.
    states_only = KeepInData(corridors, radius=0.2, segments=False)
    middle = states_only(spec.observations(plans), spec.actions(plans))[0]
    assert abs(middle - 0.7) < 0.05  # (1.4, 1.4) is 0.9 from the corridors, 0.2 allowed
    guide = Constraint(cost, active_fraction=0.0)
    assert not guide.uses_gradient  # ranking only: the sampler keeps its no-grad path
    ctx = GuideContext(spec=spec, normalizer=None, n_envs=1, n_candidates=2)
    scores = Compose([guide]).score(plans, ctx)
    assert scores[1] == 0.0 and scores[0] < -1000.0  # feasibility first


def test_bad_inputs_are_one_line_errors(corridors):
    with pytest.raises(ValueError, match="NaN"):
        KeepInData(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        KeepInData(np.zeros((10, 3)))
    with pytest.raises(ValueError, match="1 to 3 position dims"):
        KeepInData(np.zeros((10, 4)), dims=(0, 1, 2, 3))
    with pytest.raises(ValueError, match="radius >= cell"):
        KeepInData(corridors, radius=0.01, cell=0.05)
    with pytest.raises(ValueError, match="finite cell"):
        KeepInData(corridors, radius=float("inf"))
    with pytest.raises(ValueError, match="samples must be >= 2"):
        KeepInData(corridors, samples=1)
    with pytest.raises(ValueError, match="too large"):
        KeepInData(np.array([[0.0, 0.0], [1e4, 1e4]]), cell=0.05)
    spec = TrajectorySpec(obs_dim=2, act_dim=1, horizon=2)
    ctx = GuideContext(spec=spec, normalizer=None, n_envs=1, n_candidates=1)
    with pytest.raises(ValueError, match="NaN/inf for 1 of 1 plans"):
        Constraint(KeepInData(corridors)).evaluate(torch.full((1, 2, 3), float("nan")), ctx)
