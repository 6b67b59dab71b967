"""One torch/OpenMP thread for a test module (import the fixture: it is autouse).

On a CPU shared with other jobs, OpenMP's spin-waiting threads thrash: a tiny DIP step measured 8x slower with
2 threads than with 1 while other processes ran (72.8 s vs 8.9 s for one net-fitting test). Tests only check
behaviour, so one thread keeps their time predictable. Subprocesses (dip_cli) inherit OMP_NUM_THREADS.
"""
import os

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_cpu_thread():
    threads, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(threads)
    if env is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = env
