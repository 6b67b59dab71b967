import torch
from torchmetrics.functional.image import peak_signal_noise_ratio

from dip_lightning.metrics import psnr, psnr_y_shaved, rgb_to_y


def test_psnr_matches_torchmetrics_with_data_range_1():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(1, 3, 32, 32, generator=g) * 0.5  # torchmetrics would infer range 0.5 if not told
    x = (target + 0.05 * torch.randn(1, 3, 32, 32, generator=g)).clamp(0, 1)
    expected = peak_signal_noise_ratio(x, target, data_range=1.0)
    assert torch.allclose(psnr(x, target), expected, atol=1e-4)


def test_y_channel_is_studio_range_and_border_is_shaved():
    white, black = torch.ones(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)
    assert torch.allclose(rgb_to_y(white), torch.full((1, 1, 4, 4), 235 / 255))
    assert torch.allclose(rgb_to_y(black), torch.full((1, 1, 4, 4), 16 / 255))
    target = torch.rand(1, 3, 16, 16)
    x = target.clone()
    x[..., :2, :] = 1 - x[..., :2, :]  # errors only in the border
    assert torch.isinf(psnr_y_shaved(x, target, border=2))
