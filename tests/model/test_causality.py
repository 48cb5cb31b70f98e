"""Changing byte t changes no prediction at positions <= t, for every model and variant."""

import pytest
import torch

from tests.model.configs import MODEL_CONFIGS, make


@pytest.mark.parametrize("name", sorted(MODEL_CONFIGS))
@pytest.mark.parametrize("T", [41, 48])  # 41 is a multiple of no patch size; 48 of all
def test_prediction_of_byte_t_depends_on_earlier_bytes_only(name, T):
    model = make(name)
    x = torch.randint(0, 256, (2, T))
    with torch.no_grad():
        base = model(x)
        assert base.shape == (2, T, 256)
        # Every byte of a patch, across patch boundaries, the first and last positions.
        for t in sorted({0, 1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 23, 24, 31, 32, T - 2, T - 1}):
            changed = x.clone()
            changed[:, t] = (changed[:, t] + 1 + t) % 256
            out = model(changed)
            assert torch.equal(out[:, : t + 1], base[:, : t + 1]), f"position <= {t} saw byte {t}"
            if t + 1 < T:  # the perturbation does reach the next prediction: the test can fail
                assert not torch.allclose(out[:, t + 1], base[:, t + 1])


@pytest.mark.parametrize("name", sorted(MODEL_CONFIGS))
def test_batch_rows_are_independent(name):
    model = make(name)
    x = torch.randint(0, 256, (3, 30))
    with torch.no_grad():
        together = model(x)
        alone = model(x[1:2])
    torch.testing.assert_close(together[1:2], alone, atol=1e-5, rtol=1e-5)
