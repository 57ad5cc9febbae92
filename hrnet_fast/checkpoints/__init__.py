"""Load HRNet checkpoints of every published format into the reference models, and export them.

One module per family of layouts, each detected from the keys:

- ``official.py``: timm and the official repositories (classification, pose, segmentation): our own names.
- ``openmmlab.py``: mmpretrain/MMClassification, mmpose 1.x and 0.x (top-down, and 0.x's HigherHRNet),
  mmsegmentation's FCN and OCRNet (``backbone.*`` + a head).
- ``paddle.py``: PaddleClas ``.pdparams`` (three naming schemes).

``reading.py`` reads files without running code from them (``torch.load(weights_only=True)``; a numpy-only
unpickler for ``.pdparams``) and unwraps training checkpoints; ``loading.py`` detects the format and task, maps the
keys and explains a mismatch; ``conventions.py`` checks a segmentation checkpoint's ``align_corners`` (which no
state dict records) against the model's, where the format fixes it, and warns where it does not.

Where a format's conv has no bias but ours has one followed by BN (the classification head in mmpretrain and
PaddleClas, the segmentation head's first conv in mmsegmentation), loading sets our bias to zero, which is exact,
and exporting folds the bias into the BN's running mean (``BN(conv(x) + b)`` has mean ``mean - b``), exact up to
fp32 rounding.

For ``features_only`` models the classification-head entries (``downsamp_modules``, ``final_layer``,
``classifier`` and their counterparts; the ``incre_modules`` too when ``feature_location=""``) of a classification
checkpoint are ignored, as timm does.
"""
from .base import CheckpointError, Format, LoadReport
from .loading import detect_format, identify_variant, load_checkpoint, model_task
from .official import FlatFormat, TimmFormat, UnknownFormat
from .openmmlab import (MMPoseFormat, MMPoseHigherHRNetFormat, MMPretrainFormat, MMSegFormat, MMSegOCRFormat,
                        to_mmpose, to_mmpose_higher_hrnet, to_mmpretrain, to_mmseg, to_mmseg_ocr)
from .paddle import PaddleFormat, fuse_term_index, to_paddle
from .reading import read_checkpoint, unwrap

__all__ = ["CheckpointError", "LoadReport", "Format", "load_checkpoint", "detect_format", "identify_variant",
           "model_task", "read_checkpoint", "unwrap", "to_mmpretrain", "to_mmpose", "to_mmpose_higher_hrnet",
           "to_mmseg", "to_mmseg_ocr", "to_paddle", "fuse_term_index", "FlatFormat", "TimmFormat",
           "MMPretrainFormat", "MMPoseFormat", "MMPoseHigherHRNetFormat", "MMSegFormat", "MMSegOCRFormat",
           "PaddleFormat", "UnknownFormat"]
