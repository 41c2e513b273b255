"""The bf16 matmul rate as the floors read it (a burst of ten 8192^3 products) against the same
products run back to back for `--seconds`, second by second, with the GPU's SM clock, power draw
and temperature (NVML) beside each second: how much of a gap to the floor under sustained load
(C8) is the chip's clock at its power limit rather than our kernels. (`bench.kernels.residual`
prints the rate over the first 15 ms to 1 s of such products, as inside one forward.)

    python -m bench.kernels.matmul_sustained --seconds 15
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.harness.floor import matmul_tflops


def nvml_reader():
    """A function describing GPU 0's SM clock, power draw and temperature now, or None without NVML."""
    try:
        import pynvml
    except ImportError:
        return None
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)

    def read() -> str:
        sm = pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM)
        watts = pynvml.nvmlDeviceGetPowerUsage(handle) / 1e3
        celsius = pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)
        return f"SM {sm} MHz, {watts:.0f} W, {celsius} C"
    return read


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.kernels.matmul_sustained")
    ap.add_argument("--seconds", type=int, default=15)
    a = ap.parse_args()
    read = nvml_reader()
    print(f"{torch.cuda.get_device_name()}: bf16 8192^3 products")
    if read is not None:
        print(f"idle: {read()}")
    burst = matmul_tflops()
    print(f"burst (the floors' reading): {burst:.1f} TFLOP/s")
    x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    y = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    rates = []
    for second in range(a.seconds):
        torch.cuda.synchronize()
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < 1.0:
            for _ in range(20):
                x @ y
            n += 20
            torch.cuda.synchronize()
        rate = 2 * 8192**3 * n / (time.perf_counter() - start) / 1e12
        rates.append(rate)
        clocks = f" {read()}" if read is not None else ""
        print(f"  second {second + 1:2d}: {rate:6.1f} TFLOP/s ({rate / burst:.3f} of the burst){clocks}", flush=True)
    tail = rates[len(rates) // 2:]
    print(f"sustained (second half): {sum(tail) / len(tail):.1f} TFLOP/s = {sum(tail) / len(tail) / burst:.3f} "
          "of the burst")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
