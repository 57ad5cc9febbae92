"""CPU timings of the segmentation ops against the eager composition they replace (min of 5 calls, ms); the
eager bytes are its two result tensors (the full-resolution fp32 logits and int64 labels):

    PYTHONPATH=. python benchmarks/seg_ops_cpu.py
"""
import time, torch, torch.nn.functional as F
from hrnet_fast.segment.ops import resize_argmax, normalize, normalize_reference
torch.manual_seed(0)
def best(fn, reps=5):
    fn(); t = []
    for _ in range(reps):
        s = time.perf_counter(); fn(); t.append(time.perf_counter() - s)
    return min(t) * 1e3
for (c, h, w, oh, ow) in ((19, 128, 256, 512, 1024), (19, 256, 512, 1024, 2048)):
    x = torch.randn(1, c, h, w)
    eager = lambda: F.interpolate(x, size=(oh, ow), mode="bilinear", align_corners=False).argmax(1)
    fused = lambda: resize_argmax(x, oh, ow, False)
    eager_bytes = 1 * c * oh * ow * 4 + oh * ow * 8
    print(f"resize_argmax {c}x{h}x{w}->{oh}x{ow} threads={torch.get_num_threads()}: fused {best(fused):.1f} ms "
          f"(allocates {oh*ow} B labels), F.interpolate+argmax {best(eager):.1f} ms (allocates {eager_bytes/1e6:.1f} MB)")
img = torch.randint(0, 256, (1, 1024, 2048, 3), dtype=torch.uint8)
m, s = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
print(f"normalize 1024x2048: fused {best(lambda: normalize(img, m, s)):.1f} ms, reference {best(lambda: normalize_reference(img, m, s)):.1f} ms")
