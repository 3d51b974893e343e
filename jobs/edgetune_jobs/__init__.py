"""edgetune's job steps: the programs that run inside the step Pods (and outside Kubernetes).

- steps/      one module per step (`python -m edgetune_jobs.steps.<step>`): finetune, export,
              build_engine, verify, benchmark; their arguments and results are typed in the
              shared contract package (edgetune_contract)
- inference/  running a converted model: detectors per backend, preprocessing, ONNX graph
              edits, TensorRT compatibility, device and version provenance, latency statistics
- data/       datasets: fetch and prepare (VIA/COCO), VIA->COCO, the generated set, COCO AP
- training/   mmdet config adaptation and the training progress hook
- cli.py      run_step: every exit of a step leaves a result document
"""
