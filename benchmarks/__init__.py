"""ablate's benchmarks: performance and calibration measurements, run as ``python -m benchmarks``."""
