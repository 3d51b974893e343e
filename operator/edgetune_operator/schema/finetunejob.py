"""The FinetuneJob's spec and status schema and printer columns."""

from __future__ import annotations

from edgetune_contract import args

from .common import (AGE, GPU_DEFAULT, IMMUTABLE, artifact_path, artifacts_spec, boolean, coco, column,
                     common_status, env_list, integer, number, obj, placement, rule, run_settings, string,
                     timestamp)

SHORT_NAMES = ['ftj', 'finetune']
DESCRIPTION = ("Fine-tunes an mmdet detector (e.g. RTMDet-tiny) on a dataset in one GPU Job and "
               "records COCO mAP of the base and fine-tuned model.")


def spec() -> dict:
    dataset = obj(
        "The training data: exactly one of url, path or generate.",
        {
            "url": string("Download the dataset archive (zip/tar) from this URL.", maxLength=2048,
                      pattern=r"^(https?|s3|gs)://\S+$"),
            "path": artifact_path("A dataset folder already on the artifact volume."),
            "generate": obj("Generate a small synthetic balloon-like VIA set (for tests and demos).", {
                "images": integer("Number of images to generate.", minimum=4, maximum=5000, default=24),
                "seed": integer("Random seed of the generator.", minimum=0, maximum=2**31 - 1, default=0),
            }),
            "format": string("Annotation format: via (VIA 1.x/2.x polygons) or coco.", enum=list(args.DATASET_FORMATS),
                             default="via"),
            "valFraction": number("Fraction of images held out for validation when the set has no val/ split.",
                              exclusiveMinimum=True, minimum=0, maximum=0.9),
        },
        rules=[
            rule("[has(self.url), has(self.path), has(self.generate)].filter(x, x).size() == 1",
                 "exactly one of dataset.url, dataset.path and dataset.generate must be set"),
            rule("!has(self.generate) || self.format == 'via'",
                 "dataset.generate produces a VIA set: dataset.format must be via", field_path=".format"),
        ])
    model = obj("The model to fine-tune.", {
        "config": string("An mmdet config name (from the model zoo).", default=args.DEFAULT_CONFIG,
                     pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", maxLength=128),
        "checkpoint": string("Checkpoint to start from: a URL (e.g. the COCO-pretrained RTMDet-tiny of the "
                             "mmdet model zoo) or a path on the artifact volume; unset starts from random "
                             "weights (nothing is downloaded at run time).", maxLength=2048, minLength=1),
    }, default={})
    training = obj("Training settings.", {
        "epochs": integer("Training epochs.", minimum=1, maximum=1000, default=40),
        "batchSize": integer("Images per batch.", minimum=1, maximum=256, default=12),
        "imageSize": integer("Square input size in pixels; a multiple of 32.", minimum=64, maximum=2048, default=640,
                        **{"x-kubernetes-validations": [rule("self % 32 == 0", "imageSize must be a multiple of 32")]}),
        "learningRate": number("Base learning rate (AdamW).", exclusiveMinimum=True, minimum=0, maximum=1, default=0.004),
        "seed": integer("Random seed.", minimum=0, maximum=2**31 - 1, default=0),
        "workers": integer("Data loader workers.", minimum=0, maximum=32, default=2),
        "valInterval": integer("Evaluate every N epochs.", minimum=1, maximum=1000, default=10),
        "evalBase": boolean("Also evaluate the base (not fine-tuned) model, for the before/after figure.", default=True),
        "device": string("auto (the job picks cuda when available), cuda or cpu.", enum=["auto", "cuda", "cpu"],
                     default="auto"),
        "replicas": integer("Pods of a distributed run (torchrun, one node each; an Indexed Job with a headless "
                            "Service for the rendezvous on replica 0). batchSize is per process: the global batch "
                            "is batchSize x replicas x processesPerReplica, and learningRate is scaled linearly to "
                            "it (the provenance records both).", minimum=1, maximum=32, default=1),
        "processesPerReplica": integer("Processes (GPUs) per Pod; with the default resources each Pod requests "
                                       "this many nvidia.com/gpu.", minimum=1, maximum=8, default=1),
        "checkpointInterval": integer("Save a resumable checkpoint every N epochs to the artifact store: a "
                                      "retried Pod (backoffLimit, eviction, node loss) or a restarted process "
                                      "resumes from the last complete one.", minimum=1, maximum=1000),
        "startTimeoutSeconds": integer("A distributed run whose replicas are not all running this long after "
                                       "the first was created fails (StartTimeout, with the scheduler's reason), "
                                       "so that replicas do not hold GPUs waiting for one that cannot start.",
                                       minimum=30, maximum=24 * 3600, default=600),
    }, default={}, rules=[rule("!has(self.valInterval) || !has(self.epochs) || self.valInterval <= self.epochs",
                               "valInterval must not exceed epochs",
                               field_path=".valInterval")])
    return obj("The desired fine-tuning run. Immutable once created.", {
        "dataset": dataset,
        "model": model,
        "training": training,
        "placement": placement("fine-tuning Job", GPU_DEFAULT),
        "run": run_settings(),
        "artifacts": artifacts_spec(),
        "env": env_list(),
    }, required=["dataset"], rules=[IMMUTABLE])


def status() -> dict:
    return common_status({
        "model": string("The model (config name) being fine-tuned."),
        "progress": obj("Progress of the whole job, from the step's progress lines "
                        "(edgetune_contract.progress).", {
            "percent": number("Percent of the whole job done, 0-100; it never goes back within a run."),
            "phase": string("The current phase: data, eval-base, train, val (validation during training), "
                            "eval or done."),
            "epoch": integer("Current epoch."), "epochs": integer("Total epochs."),
            "iteration": integer("Current iteration."), "iterations": integer("Total iterations."),
            "loss": number("Latest training loss."),
            "etaSeconds": number("Estimated seconds left."),
            "text": string("Progress for humans, e.g. '46% training epoch 23/50, ETA 2m10s'."),
            "updateTime": timestamp("When the progress was read."),
        }),
        "metrics": obj("COCO bbox metrics on the validation set.", {
            "base": coco("The base model before fine-tuning."),
            "finetuned": coco("The fine-tuned model."),
        }),
    })


COLUMNS = [
    column("Phase", "string", ".status.phase", "Pending, Running, Succeeded or Failed."),
    column("Progress", "string", ".status.progress.text", "Percent of the whole job, phase, epoch and ETA."),
    column("mAP", "number", ".status.metrics.finetuned.mAP", "Fine-tuned COCO bbox mAP@[.50:.95]."),
    column("mAP50", "number", ".status.metrics.finetuned.mAP50", "Fine-tuned COCO bbox mAP@.50."),
    column("Base-mAP", "number", ".status.metrics.base.mAP", "Base model mAP.", priority=1),
    AGE,
]
