"""Cached decoding gives the logits of a full forward pass over the same prefix, at every step."""

import pytest
import torch

from tests.model.configs import MODEL_CONFIGS, make


@pytest.mark.parametrize("name", sorted(MODEL_CONFIGS))
@pytest.mark.parametrize("prompt_len", [0, 1, 5, 8, 13])
def test_cached_step_logits_equal_full_forward(name, prompt_len):
    model = make(name)
    x = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        full = model(x)  # full[:, t] predicts x[:, t] from x[:, :t]
        logits, state = model.start_decoding(x[:, :prompt_len])
        for t in range(prompt_len, x.shape[1]):
            torch.testing.assert_close(logits, full[:, t], atol=1e-5, rtol=1e-5, msg=f"position {t}")
            logits = model.continue_decoding(state, x[:, t])
