"""Training tasks, registered in :data:`lowbit.registry.TASKS` under the name a recipe's ``task`` names:

    image       in-memory image classification (MNIST, Fashion-MNIST, CIFAR-10, SVHN)
    imagenet    ImageNet-style folders streamed through a DataLoader (top-1 / top-5)
    lm          word / character language models, truncated BPTT (perplexity / bits per character)

Each is a small :class:`lowbit.train.engine.Task`; the loop is :func:`lowbit.train.engine.fit`.
"""
from . import image, imagenet, lm  # noqa: F401  (register the built-in tasks)
