"""An example of bringing your own model to gpuq: see ``models.Segmenter`` and the README."""
