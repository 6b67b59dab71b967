"""The baseline the framework is measured against: a plain PyTorch DIP loop, as the reference notebooks run it.

Same work per iteration as dip-run's loop with averaging and backtracking off: jittered input, forward, MSE to the
observation, backward, Adam step, PSNR against the observation and the ground truth kept on the device.
"""

from __future__ import annotations

import time

import torch

from dip_lightning.metrics import psnr

# The dip-run overrides under which its loop does this loop's work: no logging or callbacks, no averaging, no
# backtracking, the reference's jitter. The benchmarks compose their dip-run cells with these.
PLAIN_SETTINGS = [
    "logger=none",
    "callbacks=none",
    "task.exp_weight=0",
    "task.backtracking=false",
    "task.reg_noise_std=0.0333",
]


def plain_dip_loop(
    net: torch.nn.Module,
    z: torch.Tensor,
    observed: torch.Tensor,
    clean: torch.Tensor,
    iterations: int,
    lr: float = 0.01,
    reg_noise_std: float = 1 / 30,
    seed: int = 1,
) -> dict:
    gen = torch.Generator(device=z.device).manual_seed(seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    psnrs = []
    start = time.perf_counter()
    for _ in range(iterations):
        z_in = z + reg_noise_std * torch.randn(z.shape, generator=gen, device=z.device)
        out = net(z_in)
        loss = torch.nn.functional.mse_loss(out, observed)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            psnrs.append(torch.stack([psnr(out, observed), psnr(out, clean)]))
    last = torch.stack(psnrs)[-1].tolist()  # the one host sync, at the end
    if z.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "psnr_fit": last[0], "psnr_gt": last[1]}


def graphed_dip_loop(
    net: torch.nn.Module,
    z: torch.Tensor,
    observed: torch.Tensor,
    clean: torch.Tensor,
    iterations: int,
    lr: float = 0.01,
    reg_noise_std: float = 1 / 30,
    warmup: int = 3,
) -> dict:
    """The same iteration captured once as a CUDA graph and replayed: what launching no kernels from Python costs.

    An upper bound for the speed of a whole-iteration graph mode, not a dip-run option: the jitter comes from the
    default CUDA generator (graph-safe), and Adam runs with capturable=True (its step count on the device).
    """
    optimizer = torch.optim.Adam(net.parameters(), lr=lr, capturable=True)
    net.train()

    def iteration():
        out = net(z + reg_noise_std * torch.randn(z.shape, device=z.device))
        loss = torch.nn.functional.mse_loss(out, observed)
        loss.backward()
        optimizer.step()
        return torch.stack([psnr(out.detach(), observed), psnr(out.detach(), clean)])

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as capture requires
        for _ in range(warmup):
            optimizer.zero_grad(set_to_none=True)
            iteration()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)  # the backward in the graph allocates the gradients from its pool
    with torch.cuda.graph(graph):
        metrics = iteration()
    history = torch.empty((iterations, 2), device=z.device)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for k in range(iterations):
        graph.replay()
        history[k].copy_(metrics)
    last = history[-1].tolist()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "psnr_fit": last[0], "psnr_gt": last[1]}
