"""Helpers of bench_fuse.py: data, images, readers, workloads and the report."""
