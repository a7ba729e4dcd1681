"""One image classifier for three tasks: the normal-vs-abnormal gate, multiclass and multilabel.

The adapter is registered as ``resnet_gate`` (`adapters.ADAPTERS`; the name predates the other
tasks and backbones); its class is `ImageClassifier` (also `ResNetGate`), a
`adapters.base.Classifier`. The package splits along its seams:

- `adapters.gate.data`: reading images, fitting them into the square, augmentation, the
  training set and its targets, `GateInput` (how the network sees an image); no torch;
- `adapters.gate.model`: building the network, `ClassHead` (what its outputs mean), reading and
  checking checkpoints, `predict_probs` (used by predicting and by validation);
- `adapters.gate.train`: options, class-balanced losses and the training loop;
- `adapters.gate.cam`: Grad-CAM (the ``pytorch-grad-cam`` package) and the overlays;
- `adapters.gate.adapter`: `ImageClassifier`, which ties them to a config.

``options.task`` picks the task:

- ``binary`` (default, the gate): one logit, ``p_abnormal = sigmoid(logit)``; an image is
  abnormal when the dataset gives it an annotation (or, with image labels, a label other than
  the normal one);
- ``multilabel``: one sigmoid per class; the classes are the dataset's
  (`core.class_probs.dataset_classes`): its ``classification`` block or image ``labels``, else
  its categories plus "No finding" (14), each image's targets from its boxes (VinBigData: the 14
  lesions and "No finding");
- ``multiclass``: a softmax over the classes, each image having exactly one.

``model`` is the torchvision architecture: ``resnet18``, ``resnet34``, ``resnet50``,
``densenet121`` or ``efficientnet_b0``, always built with ``weights=None`` (nothing is
downloaded). ``weights`` may name a local torchvision ImageNet state dict (e.g.
``resnet18-f37072fd.pth``) or an earlier classifier checkpoint to start from; a classification
head that does not fit is skipped. Every file is read without running code
(`adapters.weights.load_weights`; ``trust_weights`` allows a full unpickle), and the
classifier's own checkpoints hold tensors and plain data only.

The network sees the grayscale image resized to ``image_size`` × ``image_size``
(``options.resize: stretch``, the default) or scaled into that square and padded
(``letterbox``), replicated to three channels and normalised with the ImageNet mean and std
(so ImageNet weights fit). The checkpoint records size, resize mode, normalisation, task and
classes, and predicting uses those whatever the config's ``image_size`` says. Training adds light
augmentation (horizontal flip, a small rotation/scale/shift, brightness and contrast) drawn
from ``(seed, epoch, index)``, so a seeded run repeats whatever the number of loader workers.

Class imbalance is handled by ``options.balance`` (`adapters.gate.train.class_weights`):
``loss`` (default) weighs each class's positive term by ``negatives / positives`` (binary and
multilabel, BCE ``pos_weight``) or class ``c`` by ``N / (k n_c)`` (multiclass cross-entropy);
``sampler`` draws images by their rarest class; ``none`` leaves the data as they are.

Schedule: ``schedule.iterations`` steps if set, else ``schedule.epochs`` (default 1) passes
over the set, ``schedule.batch_size`` images a step, ``schedule.workers`` loader processes.
The learning rate ``schedule.lr`` warms up linearly over ``schedule.warmup_iters`` steps,
then follows a cosine down to 1 % of itself.

Options (``options:`` in the config; unknown keys are refused):

- ``task``: ``binary`` | ``multiclass`` | ``multilabel`` (above).
- ``optimizer``: ``adamw`` (default; ``schedule.weight_decay``) or ``sgd`` (Nesterov, also
  ``schedule.momentum``).
- ``balance``: ``loss`` | ``sampler`` | ``none`` (above).
- ``resize``: ``stretch`` | ``letterbox`` (above).
- ``augment``: ``true`` (default) or ``false``.
- ``amp``: mixed precision (float16 autocast) on CUDA, default ``true``; never on the CPU.

``train`` writes ``OUT/weights.pth`` (tmp file, then renamed): ``{kind: "gate", arch, task,
head, classes, category_ids, image_size, resize, mean, std, state_dict, ...}``, ``OUT/loss.csv``
(one row per step) and, when the config names ``dataset.val``, ``OUT/val_metrics.csv`` after
every epoch: ``auc`` (binary: the AUC; else the macro AUROC, from `core.roc`), ``accuracy`` and,
for several classes, ``auc:NAME`` per class. Predicting gives per image ``p_abnormal``
(binary) or every class's probability; `ImageClassifier.class_probs` makes them the predictions
file (`core.class_probs.write_class_probs`). `ImageClassifier.grad_cam` draws Grad-CAM maps of
the backbone's last convolutional block for any class over the X-ray.

Importing this package imports torch and torchvision (``pytorch_grad_cam`` only when a map is
drawn); `adapters.ADAPTERS` imports it only when a classifier config is built.
"""

from __future__ import annotations

from adapters.gate.adapter import ImageClassifier, ResNetGate
from adapters.gate.cam import overlay
from adapters.gate.data import GateInput, fit_square
from adapters.gate.model import ARCHS, ClassHead, predict_p_abnormal, predict_probs

__all__ = [
    "ARCHS", "ClassHead", "GateInput", "ImageClassifier", "ResNetGate", "fit_square", "overlay",
    "predict_p_abnormal", "predict_probs",
]  # fmt: skip
