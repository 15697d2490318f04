"""A Flower app (Message API, PyTorch) for Fashion-MNIST, written as Flower's templates write one."""
