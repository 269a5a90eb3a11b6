"""Object detectors and instance segmenters (papers: v1 section 2.3, v2 section 4).

One concept per file: image batching (``image_list``), the check of targets and original sizes
every detector runs (``inputs``), ``anchors``, ``box_coder``, ``matcher``,
``sampler``, ``losses``, the region proposal network (``rpn``, ``rpn_detector``), RoI poolers
(``poolers``), RoI heads (``box_head``, ``mask_head`` with ``mask_targets`` and ``paste_masks``),
the position-sensitive R-FCN head (``ps_head``, ``ohem``), the assembled detectors
(``faster_rcnn``, ``rfcn``, ``mask_rcnn``) and R-CNN feature mimicking (``mimic``). They read
backbones only through ``feature_info`` / ``size_divisibility``.
"""

from .anchors import AnchorGenerator
from .box_coder import BoxCoder
from .box_head import FastRCNNPredictor, RoIHeads, TwoFCHead
from .conv_reduce import ConvReduce
from .faster_rcnn import FasterRCNN, faster_rcnn, rpn_detector
from .fpn import FPN
from .image_list import ImageList, batch_images
from .losses import select_class_deltas, smooth_l1_loss
from .mask_head import MaskHead, MaskPredictor, mask_loss
from .mask_rcnn import MaskRCNN, MaskRoIHeads, mask_rcnn
from .mask_targets import crop_and_resize_masks, mask_targets
from .matcher import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, Matcher
from .mimic import MIMIC_ROIS, MimicBranch, mimic_cosine_loss, strip_mimic
from .paste_masks import paste_masks_in_image
from .poolers import POOLER_KINDS, RoIPooler, assign_levels
from .postprocess import postprocess_detections, rescale_boxes, select_detections
from .ps_head import PS_POOL_KINDS, PSScoreHead, vote
from .rfcn import RFCN, RFCNHeads, rfcn
from .rpn import RegionProposalNetwork, RPNHead
from .rpn_detector import RPNDetector, class_aware_detections, detector_matcher
from .sampler import BalancedSampler

__all__ = [
    "BELOW_LOW_THRESHOLD",
    "BETWEEN_THRESHOLDS",
    "FPN",
    "MIMIC_ROIS",
    "POOLER_KINDS",
    "PS_POOL_KINDS",
    "RFCN",
    "AnchorGenerator",
    "BalancedSampler",
    "BoxCoder",
    "ConvReduce",
    "FastRCNNPredictor",
    "FasterRCNN",
    "ImageList",
    "MaskHead",
    "MaskPredictor",
    "MaskRCNN",
    "MaskRoIHeads",
    "Matcher",
    "MimicBranch",
    "PSScoreHead",
    "RFCNHeads",
    "RPNDetector",
    "RPNHead",
    "RegionProposalNetwork",
    "RoIHeads",
    "RoIPooler",
    "TwoFCHead",
    "assign_levels",
    "batch_images",
    "class_aware_detections",
    "crop_and_resize_masks",
    "detector_matcher",
    "faster_rcnn",
    "mask_loss",
    "mask_rcnn",
    "mask_targets",
    "mimic_cosine_loss",
    "paste_masks_in_image",
    "postprocess_detections",
    "rescale_boxes",
    "rfcn",
    "rpn_detector",
    "select_class_deltas",
    "select_detections",
    "smooth_l1_loss",
    "strip_mimic",
    "vote",
]
