"""Wall-clock timing of CUDA work: synchronize around each call, median of the repeats after warm-up."""

import statistics
import time

import torch


def cuda_median_seconds(fn, repeats: int = 3, warmup: int = 1) -> float:
    for _ in range(warmup):  # compilation, allocator growth, optimizer state
        fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
