"""Semantic segmentation end to end: uint8 images in, class maps out (``Segmenter``).

    pipeline   Segmenter: whole and sliding-window inference, flip averaging, probabilities; fused and reference
    reference  the plain-PyTorch pipeline (the definition of the answers)
    tiled      full-resolution scores a band of rows at a time, where the answer needs them
    windows    mmsegmentation's sliding-window layout
    images     the images Segmenter accepts, checked
    ops        the fused ops: normalize, resize_argmax
    masks      class maps as PNG files (palette or raw ids)
    command    ``hrnet-fast seg``
    evaluate   ``hrnet-fast eval --task seg``: confusion matrix, mIoU, pixel accuracy
"""
from .pipeline import Segmenter

__all__ = ["Segmenter"]
