"""Image classifiers: the small MNIST CNN of the demo (:mod:`.mnist_cnn`), plain / v1 / v2."""

from .mnist_cnn import MnistCNN, MnistCNNConfig, mnist_cnn

__all__ = ["MnistCNN", "MnistCNNConfig", "mnist_cnn"]
