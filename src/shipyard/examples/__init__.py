"""Built-in example models and data: a small digits CNN on real data, and ResNet-18."""
