"""Model compression: structured and unstructured pruning (quantization and export come next)."""
