"""Object detectors and instance segmenters (papers: v1 section 2.3, v2 section 4).

Empty for now. One concept per file goes here: image batching and transforms (``image_list``,
``transform``), ``anchors``, ``box_coder``, ``matcher``, ``sampler``, ``losses``, the region
proposal network (``rpn``), RoI heads (``box_head``, ``mask_head``), the position-sensitive R-FCN
head (``rfcn``), the assembled detectors (``faster_rcnn``, ``mask_rcnn``) and R-CNN feature
mimicking (``mimic``). They read backbones only through ``feature_info`` / ``size_divisibility``.
"""
