"""Top-down pose estimation: person boxes in, keypoints out (``TopDownPose``), with its conventions as public
plain-PyTorch functions for users who bring their own crops.

    geometry   box_to_center_scale, crop_theta (output pixel -> image pixel), to_image
    crop       the affine crop and normalisation (crop_reference), image checks
    decode     flip-back, the classic and dark decoders, decode() to image pixels
    joints     COCO's keypoints and flip pairs, flip_index
    model_check  which models are pose models, their joint count, device and dtype
    pipeline   TopDownPose
    ops        the fused crop_normalize and heatmap_decode ops (loaded by the fused pipeline only)
    coco       COCO annotation, detection and keypoint-result files
    command    ``hrnet-fast pose``
    evaluate   ``hrnet-fast eval --task pose`` (pycocotools COCOeval)
"""
from .crop import IMAGENET_MEAN, IMAGENET_STD, crop_reference
from .decode import decode, flip_back
from .geometry import box_to_center_scale, crop_theta, to_image
from .joints import COCO_FLIP_PAIRS, COCO_KEYPOINTS, flip_index
from .pipeline import TopDownPose

__all__ = ["TopDownPose", "box_to_center_scale", "crop_theta", "to_image", "crop_reference", "decode",
           "flip_back", "flip_index", "COCO_FLIP_PAIRS", "COCO_KEYPOINTS", "IMAGENET_MEAN", "IMAGENET_STD"]
