"""bench-edge: our pipelines, every CPU backend x precision with its AP drop, next to mmdeploy's
own SDK pipeline, on this CPU, in one interleaved run.

    python benchmarks/bench_edge.py [--image-size 640] [--iterations 200] [--warmup 20]
        [--checkpoint PTH --config PY | --random-model] [--threads N] [--work-dir DIR] [--image PATH]
        [--json PATH] [--skip-backends] [--skip-formats]

Same model (RTMDet-tiny trained on the generated balloon-like set, once, cached in
$EDGETUNE_CACHE/bench-edge -- or a given checkpoint, or random weights), same input size, same
post-processing values, same image (a synthetic 1280x720 one unless --image):

- ours: edgetune_jobs.steps.export --backend onnxruntime (Normalize + HWC->CHW folded into the
  graph, uint8 NHWC input), build_engine --backend onnxruntime (offline graph optimisation),
  then benchmark.run_loop over edgetune_jobs.inference.detectors.OrtDetector: letterbox into a
  preallocated buffer -> session.run -> rescale.
- mmdeploy SDK: `mmdeploy_runtime.Detector` (PyPI mmdeploy-runtime 1.3.1, which bundles its
  own onnxruntime 1.15.1) on the model dir mmdeploy makes for its SDK: the same export
  without folding (normalised float NCHW input) + deploy.json / pipeline.json / detail.json
  from mmdeploy.backend.sdk.export_info.export2SDK. Its pipeline is LoadImage, Resize, Pad,
  Normalize, Pad, DefaultFormatBundle, the net, and its own postprocess, all in C++. Run in
  a subprocess (two onnxruntime libraries in one process is asking for trouble).

Also, the same model with other input formats (float32 NHWC folded; classic float32 NCHW
normalised in numpy) -- the measurement behind export's uint8-NHWC default.

Every edgetune backend/precision (edge_backends: onnxruntime fp32/int8, OpenVINO fp32/bf16/
fp16/int8), built from the same export with the training images as calibration set, verified
on the validation set (the AP drop against the PyTorch model at this size), each in its own
process (the sweep step's workers: its own peak RSS).

All contenders run in interleaved blocks (ours, the variants, the SDK, then again ...) so
that load changes on a shared machine hit all of them alike. Prints p50/p90/p99 per stage,
our pipeline / model ratio (target <= 1.15) and ours / SDK pipeline p50 (target <= 0.8),
from one run. It never asserts on a time.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

SDK_SCRIPT = r"""
import json, sys, time
import cv2
import mmdeploy_runtime as m
model_dir, image = sys.argv[1], sys.argv[2]
img = cv2.imread(image)
det = m.Detector(model_path=model_dir, device_name="cpu", device_id=0)
print("@@", json.dumps({"ready": True, "version": m.__version__}), flush=True)
for line in sys.stdin:  # "N": run N iterations, answer their milliseconds
    ts, out = [], None
    for _ in range(int(line)):
        t0 = time.perf_counter(); out = det(img); ts.append((time.perf_counter() - t0) * 1e3)
    bboxes = out[0] if out is not None else []
    print("@@", json.dumps({"ms": ts, "detections": int((bboxes[:, 4] > 0).sum()) if len(bboxes) else 0}),
          flush=True)
"""


class SdkRunner:
    """mmdeploy_runtime.Detector in a persistent subprocess, driven block by block."""

    def __init__(self, python: str, model_dir: Path, image: str) -> None:
        self.proc = subprocess.Popen([python, "-c", SDK_SCRIPT, str(model_dir), image], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        doc = self._answer()
        if doc is None:
            err = self.proc.stderr.read().strip().splitlines()[-1:]
            raise RuntimeError(f"the SDK process did not start: {err}")
        self.version = doc["version"]
        self.detections = 0

    def _answer(self):
        for line in self.proc.stdout:  # the SDK's own prints share stdout: take the marked lines
            if line.startswith("@@ "):
                return json.loads(line[3:])
        return None

    def run(self, n: int) -> list[float]:
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        doc = self._answer()
        if doc is None:
            raise RuntimeError("the SDK process ended: " + " ".join(self.proc.stderr.read().split()[-30:]))
        self.detections = doc["detections"]
        return doc["ms"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)



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
    code = module.main(argv, result_path=str(result_path))
    doc = json.loads(result_path.read_text())
    if code != 0:
        raise SystemExit(f"{doc['step']} failed: {doc['reason']}: {doc['message']}")
    return doc


def sdk_model_dir(work: Path, ckpt: str, config: str, image_size: int, post: dict) -> Path:
    """mmdeploy's own SDK model dir: unfolded export + export2SDK's json files."""
    from mmdeploy.backend.sdk.export_info import export2SDK
    from mmengine.config import Config

    from edgetune_contract.args import DEFAULT_OPSET
    from edgetune_jobs.inference.torch_model import apply_test_cfg
    from edgetune_jobs.steps import export

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
                                        opset=DEFAULT_OPSET, pre_top_k=post.get("pre_top_k", -1))
    (out / "pipeline.json").rename(out / "edgetune-meta.json")  # the SDK's own goes in its place
    export2SDK(deploy_cfg, model_cfg, str(out), pth=ckpt, device="cpu")
    return out


def classic_detector(model_path: str, meta_path: str, threads):
    """The unfolded model with the usual Python preprocessing: letterbox, then normalise and
    HWC->CHW in numpy (what the SDK's Normalize + DefaultFormatBundle do in C++)."""
    import numpy as np

    from edgetune_contract.meta import load_meta
    from edgetune_jobs.inference.detectors import OrtDetector
    from edgetune_jobs.inference.preprocess import Preprocessor

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
    ap.add_argument("--blocks", type=int, default=10, help="interleaved measurement blocks")
    ap.add_argument("--sdk-python", default=None,
                    help="interpreter with mmdeploy-runtime for the SDK run (default: this one)")
    ap.add_argument("--random-model", action="store_true", help="random weights instead of the trained model")
    ap.add_argument("--skip-backends", action="store_true", help="skip the backend x precision contenders")
    ap.add_argument("--json", default=None, help="write every figure here (to compare runs)")
    args = ap.parse_args()
    import edge_backends

    import cv2

    from edgetune_contract.meta import load_meta
    from edgetune_jobs.inference.detectors import OrtDetector
    from edgetune_jobs.inference.device import cpu_model, versions
    from edgetune_jobs.inference.stats import latency_stats
    from edgetune_jobs.steps import benchmark, build_engine, export

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-edge-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    data = None
    if args.checkpoint and args.config:
        ckpt, config = args.checkpoint, args.config
        model_desc = f"{ckpt}"
    elif args.random_model:
        ckpt, config = make_random_model(work, args.image_size)
        model_desc = "RTMDet-tiny, random init, 1 class"
    else:
        ckpt, config, data, trained = edge_backends.trained_model()
        model_desc = (f"RTMDet-tiny trained on the generated set ({' '.join(edge_backends.TRAIN[2:6])}, "
                      f"mAP {trained['metrics']['finetuned']['mAP']:.3f} at its training size)")
    image = args.image or str(work / "synthetic.jpg")
    if not args.image:
        cv2.imwrite(image, benchmark.synthetic_image(), [cv2.IMWRITE_JPEG_QUALITY, 95])
    img = cv2.imread(image)

    def ours(name: str, *extra: str):
        """export (onnxruntime, our defaults) + build_engine -> (OrtDetector, meta)."""
        folder = work / name
        meta_path = folder / "export" / "pipeline.json"
        run_step(export, ["--out", str(folder / "export"), "--checkpoint", ckpt, "--config", config,
                          "--backend", "onnxruntime", "--image-size", str(args.image_size),
                          "--score-threshold", str(args.score_threshold), *extra], work / f"export-{name}.json")
        meta, _ = load_meta(str(meta_path))
        run_step(build_engine, ["--out", str(folder / "build"), "--onnx", str(folder / "export" / "end2end.onnx"),
                                "--meta", str(meta_path), "--backend", "onnxruntime", "--precision", "fp32"],
                 work / f"build-{name}.json")
        return OrtDetector(str(folder / "build" / "end2end.onnx"), meta, threads=args.threads), meta

    det, meta = ours("ours")
    post = dict(meta["postprocess"])
    # exported with dynamic height/width: the frame padded to a multiple of 32, not the square
    det_rect, _ = ours("ours-rect", "--dynamic")

    # the same model, unfolded, in mmdeploy's SDK model dir
    sdk_dir = sdk_model_dir(work, ckpt, config, args.image_size, post)

    # the contenders; measured in interleaved blocks, so that load changes on a shared
    # machine hit all of them alike (the ratios are the figures, not the absolute times)
    contenders: dict[str, object] = {"ours": det, "rect": det_rect}
    if not args.skip_formats:
        f32 = work / "ours-f32"
        run_step(export, ["--out", str(f32), "--checkpoint", ckpt, "--config", config, "--backend", "onnxruntime",
                          "--image-size", str(args.image_size), "--score-threshold", str(args.score_threshold),
                          "--input-dtype", "float32"], work / "export-f32.json")
        meta32, _ = load_meta(str(f32 / "pipeline.json"))
        contenders["f32"] = OrtDetector(str(f32 / "end2end.onnx"), meta32, threads=args.threads)
        contenders["classic"] = classic_detector(str(sdk_dir / "end2end.onnx"), str(sdk_dir / "edgetune-meta.json"),
                                                 args.threads)
    sdk, sdk_why = None, ""
    sdk_python = args.sdk_python or sys.executable
    probe = subprocess.run([sdk_python, "-c", "import mmdeploy_runtime"], capture_output=True, text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        sdk_why = (f"mmdeploy_runtime is not importable by {sdk_python} ({last}); "
                   "`pip install mmdeploy-runtime==1.3.1` (a cp311 manylinux2014 x86_64 wheel exists on "
                   "PyPI, bundling onnxruntime 1.15.1), or pass --sdk-python")
    else:
        try:
            sdk = SdkRunner(sdk_python, sdk_dir, image)
        except RuntimeError as exc:
            sdk_why = str(exc)

    workers, backend_rows = [], []
    if not args.skip_backends and data:
        acc = work / "acc-export"  # at the training size, with the reference AP (edge_backends.build_all)
        size = edge_backends.TRAIN[edge_backends.TRAIN.index("--image-size") + 1]
        if not (acc / "pipeline.json").is_file():
            run_step(export, ["--out", str(acc), "--checkpoint", ckpt, "--config", config, "--backend", "onnxruntime",
                              "--image-size", size, "--score-threshold", "0.001", "--val-dataset", data],
                     work / "export-acc.json")
        backend_rows = edge_backends.build_all(run_step, work, work / "ours" / "export", acc, data, args.threads)
        workers = edge_backends.start_workers(backend_rows, image, args.threads, args.warmup, work)

    blocks = max(1, min(args.blocks, args.iterations))
    per_block = [args.iterations // blocks + (1 if i < args.iterations % blocks else 0) for i in range(blocks)]
    samples: dict[str, dict[str, list[float]]] = {k: {} for k in contenders}
    sdk_ms: list[float] = []
    for name, d in contenders.items():
        benchmark.run_loop(d, [img], args.warmup, 1)
    if sdk:
        sdk.run(args.warmup)
    for n in per_block:
        for name, d in contenders.items():
            for stage, vals in benchmark.run_loop(d, [img], 0, n).items():
                samples[name].setdefault(stage, []).extend(vals)
        if sdk:
            sdk_ms.extend(sdk.run(n))
        for w in workers:
            w.run(n)
    if sdk:
        sdk.close()
    stats = {name: {k: latency_stats(v) for k, v in smp.items()} for name, smp in samples.items()}
    ours_stats = stats["ours"]

    print()
    print(f"bench-edge  model: {model_desc}, input {args.image_size}x{args.image_size}, image "
          f"{img.shape[1]}x{img.shape[0]}, {args.iterations} iterations in {blocks} interleaved blocks after "
          f"{args.warmup} warm-up, threads {args.threads or 'default'}, CPU: {cpu_model()} x{os.cpu_count()}")
    print(f"  versions: {versions('onnxruntime', 'mmdeploy', 'torch', 'opencv-python')}")
    print(f"  ours (edgetune, onnxruntime {versions('onnxruntime').get('onnxruntime')}, uint8 NHWC input, "
          "normalise folded, offline-optimised model):")
    for stage in ("preprocess", "inference", "postprocess", "pipeline"):
        s = ours_stats[stage]
        print(f"    {stage:<12} p50 {s['p50_ms']:8.3f}  p90 {s['p90_ms']:8.3f}  p99 {s['p99_ms']:8.3f}  "
              f"mean {s['mean_ms']:8.3f} ms")
    ratio_pm = ours_stats["pipeline"]["p50_ms"] / ours_stats["inference"]["p50_ms"]
    print(f"  ours pipeline / model (p50): {ratio_pm:.3f}   (target <= 1.15)")
    if sdk:
        s = latency_stats(sdk_ms)
        print(f"  mmdeploy SDK {sdk.version} (mmdeploy_runtime.Detector, its bundled onnxruntime 1.15.1, its C++ "
              f"preprocessing): pipeline p50 {s['p50_ms']:.3f}  p90 {s['p90_ms']:.3f}  p99 {s['p99_ms']:.3f}  "
              f"mean {s['mean_ms']:.3f} ms ({sdk.detections} detections)")
        ratio = ours_stats["pipeline"]["p50_ms"] / s["p50_ms"]
        print(f"  ours / SDK pipeline (p50): {ratio:.3f}   (target <= 0.8; same 640x640 input)")
    rs = stats["rect"]
    shape = det_rect.preprocess(img)[0].shape
    print(f"  ours, --dynamic export, rectangular input ({shape[2]}x{shape[1]} for this image): pipeline p50 "
          f"{rs['pipeline']['p50_ms']:.3f}  p90 {rs['pipeline']['p90_ms']:.3f}  p99 {rs['pipeline']['p99_ms']:.3f} "
          f"ms, pipeline / model {rs['pipeline']['p50_ms'] / rs['inference']['p50_ms']:.3f}")
    if sdk:
        print(f"  ours rectangular / SDK pipeline (p50): {rs['pipeline']['p50_ms'] / s['p50_ms']:.3f}   "
              "(target <= 0.8; the SDK pads to 640x640)")
    else:
        print(f"  mmdeploy SDK: not measured: {sdk_why}")
    if not args.skip_formats:
        print("  input format (same model, our onnxruntime, same blocks; p50 ms):")
        print(f"    {'input':<48} {'preprocess':>10} {'inference':>10} {'pipeline':>10}")
        names = {"ours": "uint8 NHWC, normalise folded (default)",
                 "f32": "float32 NHWC 0..255, normalise folded",
                 "classic": "float32 NCHW normalised, numpy preprocessing"}
        for key, name in names.items():
            st = stats[key]
            print(f"    {name:<48} {st['preprocess']['p50_ms']:10.3f} {st['inference']['p50_ms']:10.3f} "
                  f"{st['pipeline']['p50_ms']:10.3f}")
    sdk_stats = latency_stats(sdk_ms) if sdk else None
    table = []
    if workers:
        print("  edgetune backends x precisions (each in its own process, same blocks; ms; drop = PyTorch mAP - "
              "converted mAP on the validation set, verified at the training size):")
        table = edge_backends.report(workers, sdk_stats["p50_ms"] if sdk_stats else None)
        measured = [r for r in table if r["mapDrop"] is not None and r["mapDrop"] <= 0.01]
        if measured and sdk_stats:
            best = min(measured, key=lambda r: r["latency"]["pipeline"]["p50_ms"])
            print(f"  best edgetune pipeline within drop 0.01: {best['name']} ({best['precision_run']}), "
                  f"{best['over_sdk']:.3f} x the SDK's fp32 pipeline   (target <= 0.25 with AMX, <= 0.5 without)")
        int8 = next((r for r in table if r["name"] == "ort-int8"), None)
        if int8:
            print(f"  onnxruntime int8 / fp32 (p50): {int8['over_ort_fp32']:.3f}, drop {int8['mapDrop']:+.4f}   "
                  "(target <= 0.6 at drop <= 0.01)")
    elif not args.skip_backends:
        print("  backends x precisions: skipped (needs the trained model: not with --checkpoint or --random-model)")
    flags = (open("/proc/cpuinfo").read().split("flags", 1)[-1].split("\n", 1)[0].split()
             if os.path.exists("/proc/cpuinfo") else [])
    if args.json:
        doc = {"model": model_desc, "image_size": args.image_size, "image": f"{img.shape[1]}x{img.shape[0]}",
               "iterations": args.iterations, "blocks": blocks, "warmup": args.warmup, "threads": args.threads,
               "cpu": cpu_model(), "cpus": os.cpu_count(),
               "cpu_flags": sorted(f for f in flags if f.startswith(("avx512", "amx", "avx_vnni"))),
               "versions": versions("onnxruntime", "openvino", "nncf", "mmdeploy", "torch", "opencv-python"),
               "ours": stats, "sdk": {"pipeline": sdk_stats, "version": sdk.version} if sdk else {"skipped": sdk_why},
               "backends": table}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)  # e.g. build/ in a fresh clone
        Path(args.json).write_text(json.dumps(doc, indent=1))
        print(f"  figures written to {args.json}")
    print(f"  (work dir {work}, {time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
