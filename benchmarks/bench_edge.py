"""bench-edge: our onnxruntime pipeline next to mmdeploy's own SDK pipeline, on this CPU.

    python benchmarks/bench_edge.py [--image-size 640] [--iterations 200] [--warmup 20]
        [--checkpoint PTH --config PY] [--threads N] [--work-dir DIR] [--image PATH]

Same model (RTMDet-tiny; random init with 1 class unless a checkpoint is given), same input
size, same post-processing values, same image (a synthetic 1280x720 one unless --image):

- ours: edgetune_jobs.export --backend onnxruntime (Normalize + HWC->CHW folded into the
  graph, uint8 NHWC input), build_engine --backend onnxruntime (offline graph optimisation),
  then benchmark.run_loop over edgetune_jobs.runtime.OrtDetector: letterbox into a
  preallocated buffer -> session.run -> rescale.
- mmdeploy SDK: `mmdeploy_runtime.Detector` (PyPI mmdeploy-runtime 1.3.1, which bundles its
  own onnxruntime 1.15.1) on the model dir mmdeploy makes for its SDK: the same export
  without folding (normalised float NCHW input) + deploy.json / pipeline.json / detail.json
  from mmdeploy.backend.sdk.export_info.export2SDK. Its pipeline is LoadImage, Resize, Pad,
  Normalize, Pad, DefaultFormatBundle, the net, and its own postprocess, all in C++. Run in
  a subprocess (two onnxruntime libraries in one process is asking for trouble).

Prints the p50 pipeline latency of both and their ratio (target: ours <= 0.8x the SDK's),
and our pipeline / model-only ratio (target <= 1.15). It never asserts on a time: one run,
on a shared 2-core machine, is noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "jobs"))

SDK_SCRIPT = r"""
import json, sys, time
import numpy as np, cv2
import mmdeploy_runtime as m
model_dir, image, warmup, iters = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
img = cv2.imread(image)
det = m.Detector(model_path=model_dir, device_name="cpu", device_id=0)
for _ in range(warmup):
    det(img)
ts = []
for _ in range(iters):
    t0 = time.perf_counter(); out = det(img); ts.append((time.perf_counter() - t0) * 1e3)
bboxes = out[0]
print(json.dumps({"pipeline_ms": ts, "detections": int((bboxes[:, 4] > 0).sum()) if len(bboxes) else 0,
                  "version": m.__version__}))
"""


def _mmdet_config(name: str) -> str:
    import mmdet
    path = Path(mmdet.__file__).parent / ".mim" / "configs" / "rtmdet" / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} (mmdet's packaged configs) is missing")
    return str(path)


def make_random_model(work: Path, image_size: int) -> tuple[str, str]:
    import torch
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    register_all_modules()
    cfg = Config.fromfile(_mmdet_config("rtmdet_tiny_8xb32-300e_coco"))
    cfg.model.bbox_head.num_classes = 1
    cfg.model.backbone.pop("init_cfg", None)  # no pretrained download
    cfg.metainfo = dict(classes=("balloon",))
    for t in cfg.test_dataloader.dataset.pipeline:
        if t["type"] == "Resize":
            t["scale"] = (image_size, image_size)
        if t["type"] == "Pad":
            t["size"] = (image_size, image_size)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    # mmdet's own init (head: classification bias for a 0.01 prior, like a trained model's
    # background scores; without it every one of the 8400 boxes scores ~0.5 and NMS dominates)
    model.init_weights()
    ckpt = work / "random_rtmdet_tiny.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {"dataset_meta": {"classes": ("balloon",)}}}, ckpt)
    config = work / "random_rtmdet_tiny.py"
    cfg.dump(str(config))
    return str(ckpt), str(config)


def run_step(module, argv: list[str], result_path: Path) -> dict:
    from edgetune_jobs.cli import run_step as run

    code = run(module.STEP, lambda: module.main(argv), result_path=str(result_path))
    doc = json.loads(result_path.read_text())
    if code != 0:
        raise SystemExit(f"{module.STEP} failed: {doc['reason']}: {doc['message']}")
    return doc


def sdk_model_dir(work: Path, ckpt: str, config: str, image_size: int, post: dict) -> Path:
    """mmdeploy's own SDK model dir: unfolded export + export2SDK's json files."""
    from mmdeploy.backend.sdk.export_info import export2SDK
    from mmengine.config import Config

    from edgetune_jobs import export
    from edgetune_jobs.runtime import apply_test_cfg

    out = work / "sdk"
    run_step(export, ["--out", str(out), "--checkpoint", ckpt, "--config", config, "--backend", "onnxruntime",
                      "--image-size", str(image_size), "--no-fold-preprocess",
                      "--score-threshold", str(post["score_threshold"]),
                      "--iou-threshold", str(post["iou_threshold"]),
                      "--max-detections", str(post["max_detections"])], work / "sdk-export.json")
    model_cfg = Config.fromfile(config)
    apply_test_cfg(model_cfg, {"score_thr": post["score_threshold"], "iou_threshold": post["iou_threshold"],
                               "max_per_img": post["max_detections"]})
    deploy_cfg = export.make_deploy_cfg(image_size, False, post, output_names=["dets", "labels"],
                                        opset=export.DEFAULT_OPSET, pre_top_k=post.get("pre_top_k", -1))
    (out / "pipeline.json").rename(out / "edgetune-meta.json")  # the SDK's own goes in its place
    export2SDK(deploy_cfg, model_cfg, str(out), pth=ckpt, device="cpu")
    return out


def classic_detector(model_path: str, meta_path: str, threads):
    """The unfolded model with the usual Python preprocessing: letterbox, then normalise and
    HWC->CHW in numpy (what the SDK's Normalize + DefaultFormatBundle do in C++)."""
    import numpy as np

    from edgetune_jobs.preprocess import Preprocessor
    from edgetune_jobs.runtime import OrtDetector, load_meta

    meta, _ = load_meta(meta_path)

    class Classic(OrtDetector):
        def __init__(self):
            super().__init__(model_path, meta, threads=threads)
            self.pre = Preprocessor(self.letterbox, "uint8")
            norm = meta["normalize"]
            self.mean = np.asarray(norm["mean"], np.float32)
            self.inv_std = 1.0 / np.asarray(norm["std"], np.float32)
            self.swap = norm["bgr_to_rgb"]

        def preprocess(self, img):
            x, info = self.pre(img)
            y = (x[0].astype(np.float32) - self.mean) * self.inv_std
            if self.swap:
                y = y[..., ::-1]
            return np.ascontiguousarray(y.transpose(2, 0, 1)[None]), info

    return Classic()


def p50(values: list[float]) -> float:
    import numpy as np
    return float(np.percentile(values, 50))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image-size", type=int, default=640)
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--checkpoint")
    ap.add_argument("--config")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--image", default=None)
    ap.add_argument("--score-threshold", type=float, default=0.05,
                    help="both pipelines (mmdeploy's deploy default; the model's 0.001 is for AP)")
    ap.add_argument("--work-dir", default=None)
    ap.add_argument("--skip-formats", action="store_true", help="skip the input-format comparison")
    ap.add_argument("--sdk-python", default=None,
                    help="interpreter with mmdeploy-runtime for the SDK run (default: this one)")
    args = ap.parse_args()

    import cv2

    from edgetune_jobs import benchmark, build_engine, export
    from edgetune_jobs.runtime import OrtDetector, load_meta, versions
    from edgetune_jobs.stats import latency_stats

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-edge-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    if args.checkpoint and args.config:
        ckpt, config = args.checkpoint, args.config
        model_desc = f"{ckpt}"
    else:
        ckpt, config = make_random_model(work, args.image_size)
        model_desc = "RTMDet-tiny, random init, 1 class"
    image = args.image or str(work / "synthetic.jpg")
    if not args.image:
        cv2.imwrite(image, benchmark.synthetic_image(), [cv2.IMWRITE_JPEG_QUALITY, 95])
    img = cv2.imread(image)

    # ours
    ours = work / "ours"
    doc = run_step(export, ["--out", str(ours / "export"), "--checkpoint", ckpt, "--config", config,
                            "--backend", "onnxruntime", "--image-size", str(args.image_size),
                            "--score-threshold", str(args.score_threshold)], work / "export.json")
    meta_path = ours / "export" / "pipeline.json"
    meta, _ = load_meta(str(meta_path))
    post = dict(meta["postprocess"])
    run_step(build_engine, ["--out", str(ours / "build"), "--onnx", str(ours / "export" / "end2end.onnx"),
                            "--meta", str(meta_path), "--backend", "onnxruntime", "--precision", "fp32"],
             work / "build.json")
    det = OrtDetector(str(ours / "build" / "end2end.onnx"), meta, threads=args.threads)
    samples = benchmark.run_loop(det, [img], args.warmup, args.iterations)
    ours_stats = {k: latency_stats(v) for k, v in samples.items()}

    # the same model, unfolded, in mmdeploy's SDK model dir
    sdk_dir = sdk_model_dir(work, ckpt, config, args.image_size, post)

    # mmdeploy SDK, in a subprocess
    sdk = None
    sdk_python = args.sdk_python or sys.executable
    probe = subprocess.run([sdk_python, "-c", "import mmdeploy_runtime"], capture_output=True, text=True)
    have_sdk = probe.returncode == 0
    if not have_sdk:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        sdk_why = (f"mmdeploy_runtime is not importable by {sdk_python} ({last}); "
                   "`pip install mmdeploy-runtime==1.3.1` (a cp311 manylinux2014 x86_64 wheel exists on "
                   "PyPI, bundling onnxruntime 1.15.1), or pass --sdk-python")
    if have_sdk:
        proc = subprocess.run([sdk_python, "-c", SDK_SCRIPT, str(sdk_dir), image, str(args.warmup),
                               str(args.iterations)], capture_output=True, text=True, timeout=1800)
        if proc.returncode == 0:
            sdk = json.loads(proc.stdout.strip().splitlines()[-1])
        else:
            sdk_why = f"the SDK run failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}"

    print()
    print(f"bench-edge  model: {model_desc}, input {args.image_size}x{args.image_size}, image "
          f"{img.shape[1]}x{img.shape[0]}, {args.iterations} iterations after {args.warmup} warm-up, "
          f"threads {args.threads or 'default'}, CPU: {os.cpu_count()} cores")
    print(f"  versions: {versions('onnxruntime', 'mmdeploy', 'mmdeploy-runtime', 'torch', 'opencv-python')}")
    print(f"  ours (edgetune, onnxruntime {versions('onnxruntime').get('onnxruntime')}, uint8 NHWC input, "
          "normalise folded):")
    for stage in ("preprocess", "inference", "postprocess", "pipeline"):
        s = ours_stats[stage]
        print(f"    {stage:<12} p50 {s['p50_ms']:8.3f}  p90 {s['p90_ms']:8.3f}  p99 {s['p99_ms']:8.3f}  "
              f"mean {s['mean_ms']:8.3f} ms")
    ratio_pm = ours_stats["pipeline"]["p50_ms"] / ours_stats["inference"]["p50_ms"]
    print(f"  ours pipeline / model (p50): {ratio_pm:.3f}   (target <= 1.15)")
    if sdk:
        sdk_p50 = p50(sdk["pipeline_ms"])
        s = latency_stats(sdk["pipeline_ms"])
        print(f"  mmdeploy SDK {sdk['version']} (mmdeploy_runtime.Detector, bundled onnxruntime 1.15.1): "
              f"pipeline p50 {s['p50_ms']:.3f}  p90 {s['p90_ms']:.3f}  p99 {s['p99_ms']:.3f}  "
              f"mean {s['mean_ms']:.3f} ms, {sdk['detections']} detections")
        ratio = ours_stats["pipeline"]["p50_ms"] / sdk_p50
        print(f"  ours / SDK pipeline (p50): {ratio:.3f}   (target <= 0.8)")
    else:
        print(f"  mmdeploy SDK: not measured: {sdk_why}")
    if not args.skip_formats:
        print("  input format (same model, our onnxruntime; p50 ms):")
        print(f"    {'input':<44} {'preprocess':>10} {'inference':>10} {'pipeline':>10}")
        rows = [("uint8 NHWC, normalise folded (default)", ours_stats)]
        f32 = work / "ours-f32"
        run_step(export, ["--out", str(f32), "--checkpoint", ckpt, "--config", config, "--backend", "onnxruntime",
                          "--image-size", str(args.image_size), "--score-threshold", str(args.score_threshold),
                          "--input-dtype", "float32"], work / "export-f32.json")
        meta32, _ = load_meta(str(f32 / "pipeline.json"))
        det32 = OrtDetector(str(f32 / "end2end.onnx"), meta32, threads=args.threads)
        rows.append(("float32 NHWC 0..255, normalise folded",
                     {k: latency_stats(v) for k, v in benchmark.run_loop(det32, [img], args.warmup,
                                                                          args.iterations).items()}))
        classic = classic_detector(str(sdk_dir / "end2end.onnx"), str(sdk_dir / "edgetune-meta.json"), args.threads)
        rows.append(("float32 NCHW normalised, numpy preprocessing",
                     {k: latency_stats(v) for k, v in benchmark.run_loop(classic, [img], args.warmup,
                                                                          args.iterations).items()}))
        for name, st in rows:
            print(f"    {name:<44} {st['preprocess']['p50_ms']:10.3f} {st['inference']['p50_ms']:10.3f} "
                  f"{st['pipeline']['p50_ms']:10.3f}")
    print(f"  (work dir {work}, {time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
