"""The named training recipes (``lowbit train RECIPE``).

Architectures and optimisation follow the BNN/QNN papers (Theano code: Adam, square hinge loss,
exponential LR decay, batch 100 for MNIST and 50 for CIFAR-10/SVHN). The paper trains for 1000/500/200
epochs; the default epoch counts here are what fits a CPU budget, and ``--epochs`` sets any other.
"""

from __future__ import annotations

from .config import TrainConfig, recipe

BINARY = dict(weight_quantizer="ste_sign", act_quantizer="ste_sign")


@recipe("mnist-mlp")
def mnist_mlp() -> TrainConfig:
    """Paper MLP 784-3x4096-10, binary weights and activations (W1A1)."""
    return TrainConfig(
        recipe="mnist-mlp", dataset="mnist", model="mlp",
        model_args=dict(in_shape=[1, 28, 28], num_classes=10, hidden=4096, depth=3,
                        dropout_in=0.2, dropout_hidden=0.5, **BINARY),
        epochs=20, batch_size=100, lr_start=3e-3, lr_end=3e-7,
    )


@recipe("mnist-cnn")
def mnist_cnn() -> TrainConfig:
    """A small binary ConvNet for MNIST (W1A1): 2x32C3-MP2-2x64C3-MP2-2x128C3-MP2-512FC-10."""
    return TrainConfig(
        recipe="mnist-cnn", dataset="mnist", model="convnet",
        model_args=dict(in_shape=[1, 28, 28], num_classes=10,
                        channels=[32, 32, "M", 64, 64, "M", 128, 128, "M"], fc=[512],
                        pad_value=1.0, dropout_hidden=0.0, **BINARY),
        # No Glorot LR scale: with latent weights clipped to [-1, 1] it makes Adam flip binary weights
        # every few steps (the Theano BNN code also trains with W_LR_scale = 1). 99.26% in 9 epochs
        # (benchmarks/results/mnist_accuracy.md).
        epochs=9, batch_size=100, lr_start=1e-2, lr_end=1e-5, lr_scale=False,
    )


@recipe("cifar10-cnn")
def cifar10_cnn() -> TrainConfig:
    """Paper CIFAR-10 ConvNet 2x128C3-MP2-2x256C3-MP2-2x512C3-MP2-2x1024FC-10 (W1A1)."""
    return TrainConfig(
        recipe="cifar10-cnn", dataset="cifar10", model="convnet",
        model_args=dict(in_shape=[3, 32, 32], num_classes=10,
                        channels=[128, 128, "M", 256, 256, "M", 512, 512, "M"], fc=[1024, 1024],
                        pad_value=1.0, dropout_hidden=0.0, **BINARY),
        epochs=100, batch_size=50, lr_start=1e-3, lr_end=3e-7,
    )


@recipe("svhn-cnn")
def svhn_cnn() -> TrainConfig:
    """Paper SVHN ConvNet: the CIFAR-10 one at half the conv widths (W1A1)."""
    return TrainConfig(
        recipe="svhn-cnn", dataset="svhn", model="convnet",
        model_args=dict(in_shape=[3, 32, 32], num_classes=10,
                        channels=[64, 64, "M", 128, 128, "M", 256, 256, "M"], fc=[1024, 1024],
                        pad_value=1.0, dropout_hidden=0.0, **BINARY),
        epochs=50, batch_size=50, lr_start=1e-3, lr_end=1e-6,
    )


# ---- QNN ablations (benchmarks/qnn_ablation.py) ---------------------------------------------------------
# The two MNIST models with every QNN knob present in model_args, so that --set reaches them:
#   --set model.weight_quantizer=linear:bits=2 --set model.act_quantizer=linear:bits=2
#   --set model.grad_quantizer=grad:bits=6 --set model.norm=shift_bn --set optimizer=shift_adamax
#   --set model.act_quantizer=pact:bits=2,alpha=3 --set model.weight_quantizer=sawb:bits=2 --set pact_l2=1e-4
QNN_KNOBS = dict(grad_quantizer=None, norm="bn")


@recipe("mnist-mlp-qnn")
def mnist_mlp_qnn() -> TrainConfig:
    """mnist-mlp with the QNN knobs (k-bit quantizers, grad_quantizer, norm) open to --set."""
    cfg = mnist_mlp()
    cfg.recipe = "mnist-mlp-qnn"
    cfg.model_args.update(QNN_KNOBS)
    return cfg


@recipe("mnist-cnn-qnn")
def mnist_cnn_qnn() -> TrainConfig:
    """mnist-cnn with the QNN knobs (k-bit quantizers, grad_quantizer, norm) open to --set."""
    cfg = mnist_cnn()
    cfg.recipe = "mnist-cnn-qnn"
    cfg.model_args.update(QNN_KNOBS)
    return cfg
