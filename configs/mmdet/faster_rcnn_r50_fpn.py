# Faster R-CNN R50-FPN on MMDetection 3.3's own model definition (shipped inside mmdet).
# CXRFuse adds the data pipeline, schedule and class count from the model config (YAML).
# The backbone's ImageNet init would download from torchvision: it is switched off here;
# pass a local checkpoint as `weights:` in the model config instead.
_base_ = ["mmdet::_base_/models/faster-rcnn_r50_fpn.py"]

model = dict(backbone=dict(init_cfg=None))
