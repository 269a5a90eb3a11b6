"""Object detectors and instance segmenters (papers: v1 section 2.3, v2 section 4).

One concept per file goes here: image batching and transforms (``image_list``,
``transform``), ``anchors``, ``box_coder``, ``matcher``, ``sampler``, ``losses``, the region
proposal network (``rpn``), RoI heads (``box_head``, ``mask_head``), the position-sensitive R-FCN
head (``rfcn``), the assembled detectors (``faster_rcnn``, ``mask_rcnn``) and R-CNN feature
mimicking (``mimic``). They read backbones only through ``feature_info`` / ``size_divisibility``.
"""

# Components and the RPN (helper H's part of issue 10); the box head, poolers, FPN, post-processing
# and the assembled detectors with their presets (helper J's part).
from .anchors import AnchorGenerator
from .box_coder import BoxCoder
from .box_head import FastRCNNPredictor, RoIHeads, TwoFCHead
from .conv_reduce import ConvReduce
from .faster_rcnn import FasterRCNN, faster_rcnn, rpn_detector
from .fpn import FPN
from .image_list import ImageList, batch_images
from .losses import select_class_deltas, smooth_l1_loss
from .matcher import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, Matcher
from .poolers import POOLER_KINDS, RoIPooler, assign_levels
from .postprocess import postprocess_detections, rescale_boxes, select_detections
from .rpn import RegionProposalNetwork, RPNHead
from .rpn_detector import RPNDetector, class_aware_detections
from .sampler import BalancedSampler

__all__ = [
    "BELOW_LOW_THRESHOLD",
    "BETWEEN_THRESHOLDS",
    "FPN",
    "POOLER_KINDS",
    "AnchorGenerator",
    "BalancedSampler",
    "BoxCoder",
    "ConvReduce",
    "FastRCNNPredictor",
    "FasterRCNN",
    "ImageList",
    "Matcher",
    "RPNDetector",
    "RPNHead",
    "RegionProposalNetwork",
    "RoIHeads",
    "RoIPooler",
    "TwoFCHead",
    "assign_levels",
    "batch_images",
    "class_aware_detections",
    "faster_rcnn",
    "postprocess_detections",
    "rescale_boxes",
    "rpn_detector",
    "select_class_deltas",
    "select_detections",
    "smooth_l1_loss",
]
