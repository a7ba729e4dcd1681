"""The normal-vs-abnormal gate: a torchvision ResNet that scores ``p_abnormal`` per image.

The adapter is registered as ``resnet_gate`` (`adapters.ADAPTERS`); its class is `ResNetGate`,
a `adapters.base.Classifier`. The package splits along its seams:

- `adapters.gate.data`: reading images, fitting them into the square, augmentation, the
  training set, `GateInput` (how the network sees an image); no torch;
- `adapters.gate.model`: building the network, reading and checking checkpoints,
  `predict_p_abnormal` (used by predicting and by validation);
- `adapters.gate.train`: options and the training loop;
- `adapters.gate.cam`: Grad-CAM and the overlays;
- `adapters.gate.adapter`: `ResNetGate`, which ties them to a config.

``model`` in the config is the torchvision architecture: ``resnet18``, ``resnet34`` or
``resnet50``, always built with ``weights=None`` (nothing is downloaded). ``weights`` may name
a local torchvision ImageNet state dict (e.g. ``resnet18-f37072fd.pth``) or an earlier gate
checkpoint to start from; a classification head that does not fit is skipped. Every file is read
without running code (`adapters.base.load_weights`; ``trust_weights`` allows a full unpickle),
and the gate's own checkpoints hold tensors and plain data only.

The head is a single logit ("abnormal"), trained with ``BCEWithLogitsLoss``;
``p_abnormal = sigmoid(logit)``. An image is abnormal when the dataset gives it at least one
annotation. The network sees the grayscale image resized to ``image_size`` × ``image_size``
(``options.resize: stretch``, the default) or scaled into that square and padded
(``letterbox``), replicated to three channels and normalised with the ImageNet mean and std
(so ImageNet weights fit). The checkpoint records size, resize mode and normalisation, and
predicting uses those whatever the config's ``image_size`` says. Training adds light
augmentation (horizontal flip, a small rotation/scale/shift, brightness and contrast) drawn
from ``(seed, epoch, index)``, so a seeded run repeats whatever the number of loader workers.

Class imbalance (VinBigData is about 70 % normal) is handled by ``options.balance``:
``loss`` (default) weights the abnormal term by ``n_normal / n_abnormal``; ``sampler``
draws both classes equally often; ``none`` leaves the data as they are.

Schedule: ``schedule.iterations`` steps if set, else ``schedule.epochs`` (default 1) passes
over the set, ``schedule.batch_size`` images a step, ``schedule.workers`` loader processes.
The learning rate ``schedule.lr`` warms up linearly over ``schedule.warmup_iters`` steps,
then follows a cosine down to 1 % of itself.

Options (``options:`` in the config; unknown keys are refused):

- ``optimizer``: ``adamw`` (default; ``schedule.weight_decay``) or ``sgd`` (Nesterov, also
  ``schedule.momentum``).
- ``balance``: ``loss`` | ``sampler`` | ``none`` (above).
- ``resize``: ``stretch`` | ``letterbox`` (above).
- ``augment``: ``true`` (default) or ``false``.
- ``amp``: mixed precision (float16 autocast) on CUDA, default ``true``; never on the CPU.

``train`` writes ``OUT/weights.pth`` (tmp file, then renamed): ``{kind: "gate", arch,
image_size, resize, mean, std, head: "single_logit", state_dict, ...}``, ``OUT/loss.csv``
(one row per step) and, when the config names ``dataset.val``, ``OUT/val_metrics.csv`` (AUC,
from `core.roc`, and accuracy at 0.5 after every epoch). Progress goes to the
``adapters.gate`` loggers. `ResNetGate.grad_cam` draws Grad-CAM maps of the last residual
stage (``layer4``) for the abnormal logit over the X-ray.

Importing this package imports torch and torchvision; `adapters.ADAPTERS` imports it only when
a ``resnet_gate`` config is built.
"""

from __future__ import annotations

from adapters.gate.adapter import ResNetGate
from adapters.gate.cam import overlay
from adapters.gate.data import GateInput, fit_square
from adapters.gate.model import ARCHS, predict_p_abnormal

__all__ = ["ARCHS", "GateInput", "ResNetGate", "fit_square", "overlay", "predict_p_abnormal"]
