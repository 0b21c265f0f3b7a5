"""The GPU side of gpuq: worker launcher, model runtime, built-in analyzers."""
