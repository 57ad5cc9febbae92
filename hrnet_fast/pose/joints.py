"""Joint sets: COCO's 17 keypoints and their left/right mirror pairs, and the flip index a flip test reorders
heatmaps by."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

COCO_KEYPOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                  "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
                  "right_knee", "left_ankle", "right_ankle")
# Each pair is a joint and its mirror image (left <-> right); the nose maps to itself.
COCO_FLIP_PAIRS: Tuple[Tuple[int, int], ...] = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14),
                                                (15, 16))


def flip_index(flip_pairs: Sequence[Sequence[int]], num_joints: int,
               expected_joints: Optional[int] = None) -> torch.Tensor:
    """int64 [num_joints]: entry j is the joint that j becomes in a mirrored image (j itself if unpaired).

    ``expected_joints``: the joint count the pairs were written for (17 for COCO's); a model with another count
    is refused, since pairs that fit by index can still name the wrong joints."""
    if expected_joints is not None and num_joints != expected_joints:
        raise ValueError(f"flip_pairs are for {expected_joints} joints but the model predicts {num_joints} "
                         f"heatmaps; pass the flip_pairs of the model's joint set")
    index = list(range(num_joints))
    seen = set()
    for pair in flip_pairs:
        if len(pair) != 2:
            raise ValueError(f"flip_pairs must be pairs of joint indices, got {tuple(pair)}")
        a, b = (int(i) for i in pair)
        for j in (a, b):
            if not 0 <= j < num_joints:
                raise ValueError(f"flip_pairs name joint {j}, but the model predicts {num_joints} heatmaps "
                                 f"(joints 0..{num_joints - 1})")
            if j in seen:
                raise ValueError(f"flip_pairs name joint {j} twice")
            seen.add(j)
        index[a], index[b] = b, a
    return torch.tensor(index, dtype=torch.int64)
