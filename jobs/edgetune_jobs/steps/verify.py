"""verify: COCO AP of the converted model next to the PyTorch reference from the export meta.

    python -m edgetune_jobs.steps.verify --out DIR --model PATH --meta PATH --backend tensorrt|onnxruntime
        --val-dataset DIR [--max-map-drop F] [--threads N] [--max-images N]   (edgetune_contract.args.VerifyArgs)

The converted model runs the same letterbox as the reference did at export time and its
detections go through the same pycocotools evaluation (coco_eval.evaluate_detector), so
map_drop = reference mAP - converted mAP measures the conversion alone (positive = worse).
With --max-map-drop, a larger drop fails the step (ok=false, reason AccuracyDropTooLarge):
the gate is edgetune_contract.results.accuracy_gate, decided here and nowhere else (the
operator records the step's verdict). The figures are reported either way. No torch needed: this runs on the device.
"""

from __future__ import annotations

import json
import os
import sys
import time

from edgetune_contract.args import VerifyArgs
from edgetune_contract.results import VerifyResult, accuracy_gate, map_drop

from ..cli import StepError, entry_point
from ..inference.device import device_info, versions
from .inputs import check_backend, load_step_inputs, open_detector, read_build_info

REPORT = "verify.json"


def run(args: VerifyArgs) -> VerifyResult:
    from ..data.coco_eval import ValSet, evaluate_detector

    t0 = time.monotonic()
    meta, meta_dir = load_step_inputs(args.model, args.meta)
    check_backend(meta, args.backend)
    if args.max_map_drop is not None and args.max_map_drop < 0:
        raise StepError("InvalidInput", f"--max-map-drop must be >= 0, got {args.max_map_drop}")
    try:
        val = ValSet.open(args.val_dataset)
    except (OSError, ValueError) as exc:
        raise StepError("DatasetNotFound", str(exc)) from None
    ref_block = meta.get("reference") or None
    reference = ref_block["metrics"] if ref_block else None
    if args.max_map_drop is not None and reference is None:
        raise StepError("InvalidInput", "--max-map-drop needs the reference AP in the meta "
                                        "(run the export step with --val-dataset)")
    if ref_block and os.path.abspath(ref_block.get("dataset", "")) != os.path.abspath(args.val_dataset):
        print(f"verify: note: the reference AP was measured on {ref_block.get('dataset')}, "
              f"this run uses {args.val_dataset}", file=sys.stderr)

    build = read_build_info(args.model)
    precision = build.get("precision", "fp32" if args.backend == "onnxruntime" else "unknown")
    det = open_detector(args.backend, args.model, meta, meta_dir, threads=args.threads, precision=precision)
    try:
        converted, n = evaluate_detector(det, val, meta["classes"], max_images=args.max_images)
    except ValueError as exc:
        raise StepError("InvalidInput", str(exc)) from None
    drop = map_drop(reference, converted)
    ran = det.provenance().get("precision_run") or build.get("precision_run")
    gpu = getattr(getattr(det, "runner", None), "cuda", None)
    dev = device_info(gpu.device_name() if gpu else None)
    vers = versions(*{"onnxruntime": ("onnxruntime",), "openvino": ("openvino", "nncf")}.get(
        args.backend, ("tensorrt",)), "numpy")
    calibration = {k: v for k, v in (("calibration_images", (build.get("details") or {}).get("calibration_images")),
                                     ("calibration_method", (build.get("details") or {}).get("method")))
                   if v is not None and precision == "int8"}
    if ref_block and n != ref_block.get("images"):
        print(f"verify: note: {n} images evaluated, the reference used {ref_block.get('images')}",
              file=sys.stderr)

    ok = accuracy_gate(drop, args.max_map_drop)  # drop is known here: the reference was checked above
    reason = "Succeeded" if ok else "AccuracyDropTooLarge"
    ref_txt = f"{reference['mAP']:.4f}" if reference else "n/a"
    message = (f"{args.backend} {precision}{f' (ran {ran})' if ran and ran != precision else ''} mAP {converted['mAP']:.4f} vs PyTorch {ref_txt}"
               + (f", drop {drop:+.4f}" if drop is not None else " (no reference in the meta)")
               + (f" > allowed {args.max_map_drop} (budget); the model is kept for inspection: {args.model}"
                  if not ok else "")
               + f" on {n} images")
    os.makedirs(args.out, exist_ok=True)
    report = {"converted": converted, "reference": reference, "map_drop": drop, "ok": ok,
              "images": n, "backend": args.backend, "precision": precision, "model": os.path.abspath(args.model),
              "meta": os.path.abspath(args.meta), "val_dataset": os.path.abspath(args.val_dataset),
              "max_map_drop": args.max_map_drop, "device": dev, "versions": vers, "precision_run": ran,
              **calibration,
              "seconds": round(time.monotonic() - t0, 2)}
    with open(os.path.join(args.out, REPORT), "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2)
    return VerifyResult(
        ok=ok, reason=reason, message=message, converted=converted, reference=reference, map_drop=drop,
        artifacts={"report": REPORT},
        provenance={"backend": args.backend, "precision": precision, "images": n, "device": dev,
                    **({"precision_run": ran} if ran else {}), **calibration,
                    "input_padding": det.input_padding(), "versions": vers, "seconds": report["seconds"]})


main = entry_point(VerifyArgs, run)

if __name__ == "__main__":
    sys.exit(main())
