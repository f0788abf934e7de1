"""A minimal Flower NumPy app: the baseline of ``benchmarks/deployment_latency.py``."""
