"""Semantic segmenters: DeepLab (v1 paper, section 2.3) with an optional ASPP head goes here.

Empty for now. A segmenter reads its backbone through ``feature_info`` / ``size_divisibility``
and never imports from :mod:`torchdcn.models.detection`.
"""
