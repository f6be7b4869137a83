"""Every named training recipe (``lowbit train RECIPE``), registered in :data:`lowbit.registry.RECIPES`.

Architectures and optimisation follow the BNN/QNN papers (Theano code: Adam, square hinge loss,
exponential LR decay, batch 100 for MNIST and 50 for CIFAR-10/SVHN). The paper trains for 1000/500/200
epochs; the default epoch counts here are what fits a CPU budget, and ``--epochs`` sets any other.
"""

from __future__ import annotations

from ..models.lm import LM_SETTINGS
from .config import TrainConfig, recipe

# init="glorot": the latent-weight start these recipes were measured with (BinaryConnect's Glorot range).
# The layers' default is the BinaryNet reference code's U[-1, 1]. Side by side (benchmarks/mnist_accuracy.py,
# W1A1 MLP 3x2048, 4 epochs, same seed): reference init + Glorot LR scale 97.39%, Glorot init + scale 96.93%,
# Glorot init without the scale 97.31%; so mnist-mlp (which keeps the scale) now starts as the reference
# does. mnist-cnn runs without the scale, where the Glorot start measured 99.26%: it keeps it.
BINARY = dict(weight_quantizer="ste_sign", act_quantizer="ste_sign", init="glorot")


@recipe("mnist-mlp")
def mnist_mlp() -> TrainConfig:
    """Paper MLP 784-3x4096-10, binary weights and activations (W1A1)."""
    return TrainConfig(
        recipe="mnist-mlp", dataset="mnist", model="mlp",
        model_args=dict(in_shape=[1, 28, 28], num_classes=10, hidden=4096, depth=3,
                        dropout_in=0.2, dropout_hidden=0.5, **dict(BINARY, init="reference")),
        epochs=20, batch_size=100, lr_start=3e-3, lr_end=3e-7,
    )


def _mnist_convnet() -> TrainConfig:
    """The MNIST ConvNet 2x32C3-MP2-2x64C3-MP2-2x128C3-MP2-512FC-10 (W1A1), unaugmented, as mnist-cnn-qnn and
    the QNN ablation (benchmarks/qnn_ablation.py) train it."""
    return TrainConfig(
        recipe="mnist-cnn", dataset="mnist", model="convnet",
        model_args=dict(in_shape=[1, 28, 28], num_classes=10,
                        channels=[32, 32, "M", 64, 64, "M", 128, 128, "M"], fc=[512],
                        pad_value=1.0, dropout_hidden=0.0, **BINARY),
        # No Glorot LR scale: with Glorot-range latent weights it makes Adam flip binary weights every few
        # steps. (The Theano BNN code uses the scale, W_LR_scale = "Glorot", with H = 1: latent weights start
        # in U[-1, 1], far from flipping.)
        epochs=24, batch_size=100, lr_start=1e-2, lr_end=1e-5, lr_scale=False,
    )


@recipe("mnist-cnn")
def mnist_cnn() -> TrainConfig:
    """A small binary ConvNet for MNIST (W1A1): 2x32C3-MP2-2x64C3-MP2-2x128C3-MP2-512FC-10, each training image
    shifted by up to 2 pixels, BN statistics re-estimated before each evaluation."""
    cfg = _mnist_convnet()
    # Unaugmented, the net fits the training set (99.9%) and its test accuracy stalls near 99.35% (24 epochs,
    # 99.35% at the last). With the shifts and the recalibrated statistics: 99.42% after 28 epochs in 51.7 min
    # (benchmarks/results/mnist_accuracy.md, cnn-w1a1-60min-shift; --set amp=bf16 --set channels_last=true
    # fit them in the hour on an AMX CPU).
    cfg.epochs, cfg.random_shift, cfg.bn_recalibrate = 28, 2, 5000
    return cfg


def _paper_convnet(name: str, dataset: str, width: int, epochs: int, lr_end: float) -> TrainConfig:
    """The BNN paper's 32x32 ConvNet: 2x(w)C3-MP2-2x(2w)C3-MP2-2x(4w)C3-MP2-2x1024FC-10, batch 50, W1A1."""
    return TrainConfig(
        recipe=name, dataset=dataset, model="convnet",
        model_args=dict(in_shape=[3, 32, 32], num_classes=10,
                        channels=[width, width, "M", 2 * width, 2 * width, "M", 4 * width, 4 * width, "M"],
                        fc=[1024, 1024], pad_value=1.0, dropout_hidden=0.0, **BINARY),
        epochs=epochs, batch_size=50, lr_start=1e-3, lr_end=lr_end,
    )


@recipe("cifar10-cnn")
def cifar10_cnn() -> TrainConfig:
    """Paper CIFAR-10 ConvNet 2x128C3-MP2-2x256C3-MP2-2x512C3-MP2-2x1024FC-10 (W1A1)."""
    return _paper_convnet("cifar10-cnn", "cifar10", 128, epochs=100, lr_end=3e-7)


@recipe("svhn-cnn")
def svhn_cnn() -> TrainConfig:
    """Paper SVHN ConvNet: the CIFAR-10 one at half the conv widths (W1A1)."""
    return _paper_convnet("svhn-cnn", "svhn", 64, epochs=50, lr_end=1e-6)


# ---- QNN ablations (benchmarks/qnn_ablation.py) ---------------------------------------------------------
# The two MNIST models with every QNN knob present in model_args, so that --set reaches them:
#   --set model.weight_quantizer=linear:bits=2 --set model.act_quantizer=linear:bits=2
#   --set model.grad_quantizer=grad:bits=6 --set model.norm=shift_bn --set optimizer=shift_adamax
#   --set model.act_quantizer=pact:bits=2,alpha=3 --set model.weight_quantizer=sawb:bits=2 --set pact_l2=1e-4
QNN_KNOBS = dict(grad_quantizer=None, norm="bn")


def _with_qnn_knobs(base: TrainConfig, name: str) -> TrainConfig:
    base.recipe = name
    base.model_args.update(QNN_KNOBS)
    return base


@recipe("mnist-mlp-qnn")
def mnist_mlp_qnn() -> TrainConfig:
    """mnist-mlp with the QNN knobs (k-bit quantizers, grad_quantizer, norm) open to --set."""
    return _with_qnn_knobs(mnist_mlp(), "mnist-mlp-qnn")


@recipe("mnist-cnn-qnn")
def mnist_cnn_qnn() -> TrainConfig:
    """The mnist-cnn ConvNet with the QNN knobs (k-bit quantizers, grad_quantizer, norm) open to --set, trained
    as the QNN ablation measured it: unaugmented, no BN recalibration unless --set, 24 epochs."""
    return _with_qnn_knobs(_mnist_convnet(), "mnist-cnn-qnn")


# ---- Binary ResNets with real-valued shortcuts (Bi-Real Net / ReActNet style; lowbit.models.resnet) ------
# Every block is BN(BinConv3x3(sign(x))) + shortcut(x) with x real-valued; the stem (on 8-bit pixels) and the
# 3x3 convs are binary, the downsampling shortcuts (AvgPool2 -> 1x1 conv -> BN) and the last Linear are
# real-valued. Cross-entropy on the Linear's logits and Adam, as Bi-Real / ReActNet train; no Glorot LR
# scale (as mnist-cnn: with Glorot-range latent weights it would flip binary weights every few steps). The
# QNN knobs (weight/act quantizer, grad_quantizer, norm, init) are in model_args, so --set reaches them.


def _binary_resnet(name: str, dataset: str, in_shape, stem_stride, widths, blocks, strides, **schedule) -> TrainConfig:
    return TrainConfig(
        recipe=name, dataset=dataset, model="binary_resnet",
        model_args=dict(in_shape=list(in_shape), num_classes=10, widths=list(widths), blocks=list(blocks),
                        strides=list(strides), stem_stride=stem_stride, pad_value=1.0, **BINARY, **QNN_KNOBS),
        optimizer="adam", lr_scale=False, loss="cross_entropy", **schedule,
    )


@recipe("cifar10-resnet")
def cifar10_resnet() -> TrainConfig:
    """Bi-Real-18 binary ResNet (W1A1, real-valued shortcuts): 64-128-256-512 x 4 single-conv blocks.

    The 32x32 form of Bi-Real Net 18 (Liu et al. 2018): a 3x3 binary stem (64) on the pixels instead of
    ImageNet's 7x7/2 conv + max pool, then 4 stages of 4 single-conv blocks (16 binary 3x3 convolutions,
    each with its own real-valued shortcut; stages 2-4 start at stride 2: 32 -> 16 -> 8 -> 4), global
    average pool and a real-valued FC(10). 11.2M parameters (the binary 3x3 convs: 11.0M, 1.4 MB as bits).
    Schedule: the other CIFAR-10 recipe's batch 50 and 100 epochs; Adam from ReActNet's 5e-4, decayed
    exponentially to 5e-7 (Bi-Real/ReActNet decay to about 0). Not measured here (no CIFAR-10 offline).
    """
    return _binary_resnet("cifar10-resnet", "cifar10", (3, 32, 32), 1, (64, 128, 256, 512), (4, 4, 4, 4), (1, 2, 2, 2),
                          epochs=100, batch_size=50, lr_start=5e-4, lr_end=5e-7)


@recipe("mnist-resnet")
def mnist_resnet() -> TrainConfig:
    """cifar10-resnet's MNIST twin: binary ResNet, 3x32 + 8x64 single-conv blocks, real-valued shortcuts (W1A1).

    Same blocks, stem, shortcuts and head as cifar10-resnet, sized for 2 epochs on one CPU thread: a 3x3/2
    binary stem (28 -> 14, as Bi-Real's ImageNet stem halves the resolution first), 3 blocks of 32 channels
    at 14x14, 8 blocks of 64 at 7x7 (the first at stride 2, AvgPool2 -> 1x1 conv -> BN shortcut): 12 binary
    3x3 convolutions, 0.31M parameters. Depth goes to the cheap 7x7 stage (receptive field 75 pixels: the
    whole digit); a stride-1 stem with a 28x28 stem output ((32, 64) x (2, 6)) took 1.2x the time for
    98.51%. Adam 5e-3 -> 5e-4 (this model decayed to 5e-5: 98.46%, to 1.5e-3: 98.27%);
    ``bn_recalibrate``: before each evaluation the BN statistics are re-estimated over 10,000 training
    images, as binary weights still flip at the end of so short a run and the running averages lag them.

    Measured (full MNIST, seed 0, ``OMP_NUM_THREADS=1 lowbit train mnist-resnet --data-dir DIR``): 98.65%
    test accuracy after 2 epochs (97.76% after 1), 275-322 s of training on one thread of a shared 2-core
    machine (the same run twice, bit-identical results).
    """
    cfg = _binary_resnet("mnist-resnet", "mnist", (1, 28, 28), 2, (32, 64), (3, 8), (1, 2),
                         epochs=2, batch_size=100, lr_start=5e-3, lr_end=5e-4)
    cfg.bn_recalibrate = 10000
    return cfg


# --------------------------------------------------------------------------------------------------------
# Language models (task "lm"). The PTB recipes train 4-bit weights and 4-bit activations (the QNN paper's
# recurrent setting; change with --set model.weight_bits=2 --set model.act_bits=3, 32 for full precision).
# Data settings are model arguments (lowbit.models.lm.LM_SETTINGS): offline there is no ptb.train.txt, and
# model.train_file=auto then trains on ptb.valid.txt and tests on ptb.test.txt (metrics.json says so under
# data.note). Tiny Shakespeare uses a 90/10 split of <data>/tinyshakespeare/input.txt.
# --------------------------------------------------------------------------------------------------------


def _lm(name: str, dataset: str, cell: str, size: int, emb_size: int, dropout: float, data: dict,
        **schedule) -> TrainConfig:
    """A W4A4 ``rnn_lm`` recipe: 2 layers of ``size`` units, Adam, no Glorot LR scale; ``data`` overrides the
    LM data settings (level, files, bptt, gradient clip)."""
    return TrainConfig(
        recipe=name, dataset=dataset, model="rnn_lm", task="lm", loss="cross_entropy",
        model_args=dict(
            vocab_size=0, cell=cell, emb_size=emb_size, hidden_size=size, num_layers=2, dropout=dropout,
            tie_weights=False, weight_bits=4, act_bits=4, weight_quantizer="auto", act_quantizer="auto",
            weight_scale="max", quantize_embedding=False, quantize_decoder=False, init="torch",
            **{**LM_SETTINGS, **data},
        ),
        optimizer="adam", lr_scale=False, **schedule,
    )


def _ptb(name: str, cell: str) -> TrainConfig:
    return _lm(name, "ptb", cell, 300, 300, 0.5, {"level": "word", "bptt": 35, "clip_grad": 0.25},
               epochs=12, batch_size=20, eval_batch_size=10, lr_start=2e-3, lr_end=2e-4)


@recipe("ptb-lstm")
def ptb_lstm() -> TrainConfig:
    """PTB word LM, 2x300 LSTM, 4-bit weights and activations (train on valid offline)."""
    return _ptb("ptb-lstm", "lstm")


@recipe("ptb-gru")
def ptb_gru() -> TrainConfig:
    """PTB word LM, 2x300 GRU, 4-bit weights and activations (train on valid offline)."""
    return _ptb("ptb-gru", "gru")


@recipe("ptb-rnn")
def ptb_rnn() -> TrainConfig:
    """PTB word LM, 2x300 tanh RNN, 4-bit weights and activations (train on valid offline)."""
    cfg = _ptb("ptb-rnn", "rnn")
    cfg.lr_start, cfg.lr_end = 1e-3, 1e-4
    return cfg


@recipe("shakespeare-lstm")
def shakespeare_lstm() -> TrainConfig:
    """Tiny Shakespeare char LM, 2x256 LSTM, 4-bit weights and activations, 90/10 split."""
    # the word-level file names do not apply to a character corpus: left empty so the config says so
    data = {"level": "char", "bptt": 100, "clip_grad": 1.0, "train_file": "", "valid_file": "", "test_file": "",
            "vocab_from": ""}
    return _lm("shakespeare-lstm", "tinyshakespeare", "lstm", 256, 64, 0.1, data,
               epochs=4, batch_size=32, eval_batch_size=32, lr_start=3e-3, lr_end=3e-4)


# --------------------------------------------------------------------------------------------------------
# ImageNet (task "imagenet"; lowbit.data.imagenet, lowbit.models.imagenet)
# --------------------------------------------------------------------------------------------------------


@recipe("imagenet-alexnet")
def imagenet_alexnet() -> TrainConfig:
    """QNN AlexNet on ImageNet: binary weights, 2-bit activations (paper: 51.03% top-1)."""
    return TrainConfig(
        recipe="imagenet-alexnet", dataset="imagenet", model="alexnet_qnn", task="imagenet",
        model_args=dict(num_classes=1000, widths=[192, 576, 1152, 768, 256], fc=[4096, 4096],
                        weight_quantizer="ste_sign", act_quantizer="linear:bits=2", pad_value=0.0, norm="bn",
                        grad_quantizer=None, init="glorot"),
        # BinaryNet.pytorch's regime: Adam 5e-3 falling to 1e-5 by epoch ~45; no Glorot LR scale there.
        epochs=45, batch_size=256, eval_batch_size=256, optimizer="adam", lr_start=5e-3, lr_end=1e-5,
        lr_scale=False, loss="cross_entropy",
    )


@recipe("imagenet-resnet18-pact-sawb")
def imagenet_resnet18_pact_sawb() -> TrainConfig:
    """ResNet-18, PACT 2-bit activations + SAWB 2-bit weights, FP first/last layer and shortcuts."""
    return TrainConfig(
        recipe="imagenet-resnet18-pact-sawb", dataset="imagenet", model="resnet18_pact_sawb", task="imagenet",
        model_args=dict(num_classes=1000, widths=[64, 128, 256, 512], blocks=[2, 2, 2, 2],
                        weight_quantizer="sawb:bits=2", act_quantizer="pact:bits=2,alpha=10.0", norm="bn",
                        grad_quantizer=None, init="glorot"),
        # SGD momentum 0.9, weight decay 5e-5, LR 0.1 decayed over the run; alpha starts at 10 with an L2
        # penalty of the same strength as the weight decay.
        epochs=90, batch_size=256, eval_batch_size=256, optimizer="sgd_momentum", lr_start=0.1, lr_end=1e-4,
        lr_scale=False, loss="cross_entropy", pact_l2=5e-5,
    )
