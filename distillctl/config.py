"""The config schema: dataclasses registered in Hydra's ConfigStore, so a misspelt key is rejected."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from distillctl.bounds import bounded

# Trained weights shipped inside the package; a config names one as ${bundled:FILE} (docs in the folder's README).
BUNDLED_WEIGHTS = Path(__file__).resolve().parent / "weights"

CIFAR10_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR10_STD = [0.2470, 0.2435, 0.2616]


# Named choices are enums so that a typo is refused while the config is composed, before any stage runs,
# with the valid values listed. StrEnum members compare equal to their strings and print as them.
class Precision(StrEnum):
    auto = "auto"  # bf16 autocast on CUDA, fp32 elsewhere
    fp32 = "fp32"
    bf16 = "bf16"


class OptimizerName(StrEnum):
    sgd = "sgd"
    adamw = "adamw"


class SchedulerName(StrEnum):
    step = "step"
    cosine = "cosine"
    constant = "constant"


class PruneMethod(StrEnum):
    structured = "structured"
    unstructured = "unstructured"


class Importance(StrEnum):
    l1 = "l1"
    l2 = "l2"
    bn_scale = "bn_scale"


class QuantizeMethod(StrEnum):
    """Each method writes runs/<recipe>/<method>/, so several quantized versions sit side by side."""

    fp16 = "fp16"
    bf16 = "bf16"
    int8_static = "int8_static"
    int8_qat = "int8_qat"
    onnx_int8 = "onnx_int8"
    executorch_int8 = "executorch_int8"  # a .pte program for phones and boards: int8 on ExecuTorch's XNNPACK backend


class QuantizeSource(StrEnum):
    auto = "auto"  # the pruned student when there is one, else the student
    student = "student"
    pruned = "pruned"


class Loader(StrEnum):
    auto = "auto"  # resident when the decoded training split fits dataset.resident_max_gb, else stream
    resident = "resident"
    stream = "stream"


class OnBadImage(StrEnum):
    skip = "skip"  # warn, count in metrics.json, go on (many bad images still stop the run)
    error = "error"  # stop at the first, naming the file


class OnNan(StrEnum):
    stop = "stop"  # end the run at the next loss read-out (every log_every steps), keeping the last good checkpoint
    skip_step = "skip_step"  # read the loss every step and skip the update where it is not finite (stops after 10 in a row)


class TeacherCache(StrEnum):
    auto = "auto"  # read cached teacher logits where present, run the teacher for the rest and keep its answers
    on = "on"  # fill the cache for every view before training, then never run the teacher
    off = "off"


class SamplerName(StrEnum):
    tpe = "tpe"  # Optuna's TPE: models good and bad regions from finished trials (one or two objectives)
    random = "random"
    nsga2 = "nsga2"  # genetic; for a Pareto search (search.minimize) with many trials


class PrunerName(StrEnum):
    median = "median"  # stop a trial whose validation top-1 falls below the median of earlier trials at that epoch
    hyperband = "hyperband"
    none = "none"


class SearchCost(StrEnum):
    latency_ms = "latency_ms"  # batch-1 CPU latency, measured as `evaluate` does
    macs = "macs"


class WandbMode(StrEnum):
    offline = "offline"
    online = "online"
    disabled = "disabled"


class Int8Backend(StrEnum):
    auto = "auto"  # qnnpack on ARM CPUs, x86 elsewhere
    x86 = "x86"
    fbgemm = "fbgemm"
    qnnpack = "qnnpack"  # torch's int8 kernels for ARM (they also run, slower, on x86)


@dataclass
class DatasetConfig:
    """Where images come from and how they are split and augmented."""

    name: str = "cifar10"
    # A Hub id (uoft-cs/cifar10; uoft-cs/cifar10@REVISION pins a commit, branch or tag), a local directory in the
    # Hub's parquet layout, an image folder (<class>/*.jpg, or train/<class>/*.jpg and test/<class>/*.jpg), or
    # `embedded` for the sample shipped in the package.
    path: str = "embedded"
    # null: the data set's only Image column / only ClassLabel column; a name given must exist.
    image_column: Optional[str] = None
    label_column: Optional[str] = None
    train_split: str = "train"
    # null: hold test_size of each class of the train split out as the test split (a data set without a test split).
    test_split: Optional[str] = "test"
    train_limit: Optional[int] = bounded(None, min=1)
    test_limit: Optional[int] = bounded(None, min=1)
    # Held out of train to pick the best checkpoint: a fraction (< 1) or a count of images.
    val_size: float = bounded(0.1, above=0)
    # The share of each class held out for testing from an image folder of class folders alone (no train/ and
    # test/), or from the train split when test_split is null.
    test_size: float = bounded(0.2, above=0, below=1)
    image_size: int = bounded(32, min=8, max=4096)
    # resident: every image decoded once into memory on the training device; training crops are padded shifts.
    # stream: files decoded by `workers` processes per batch, RandomResizedCrop for training, memory flat in data size.
    loader: Loader = Loader.auto
    resident_max_gb: float = bounded(2.0, above=0)
    workers: Optional[int] = bounded(None, min=0)  # stream: null = one per core less one (at most 16)
    crop_padding: int = bounded(4, min=0)  # resident training crops
    min_crop_scale: float = bounded(0.08, above=0, max=1)  # stream: the smallest share of the image a training crop keeps
    crop_pct: float = bounded(0.875, above=0, max=1)  # stream evaluation: resize to image_size / crop_pct, centre crop
    interpolation: str = "bilinear"  # stream: bilinear or bicubic
    auto_augment: Optional[str] = None  # stream: a timm policy such as rand-m9-mstd0.5 or trivialaugment
    # Both loaders: mix each training batch with its reverse (timm's Mixup; the Beta distribution's alpha, 0 = off).
    # The teacher sees the mixed images too; cross-entropy reads the mixed labels as class probabilities.
    mixup_alpha: float = bounded(0.0, min=0)
    cutmix_alpha: float = bounded(0.0, min=0)
    hflip: bool = True
    on_bad_image: OnBadImage = OnBadImage.skip
    mean: list[float] = field(default_factory=lambda: list(CIFAR10_MEAN))
    std: list[float] = field(default_factory=lambda: list(CIFAR10_STD))
    cache_dir: str = "${oc.env:DISTILLCTL_CACHE,'~/.cache/distillctl'}"


@dataclass
class ModelConfig:
    """A network: a timm model name (our CIFAR zoo is registered there) and where its weights come from."""

    name: str = "resnet20"
    # timm's published weights (online); the classifier head is replaced when the data set's classes differ.
    pretrained: bool = False
    # The same, offline: a timm or safetensors weights file for this architecture (tensors only, nothing unpickled).
    pretrained_file: Optional[str] = None
    # Weights to load instead of the run workspace's (for the teacher: skips the train-teacher lookup).
    checkpoint: Optional[str] = None
    # Learning rate when this model is the one being trained; null means optimizer.lr.
    lr: Optional[float] = bounded(None, above=0)
    kwargs: dict[str, Any] = field(default_factory=dict)
    # In a `teachers` list: this teacher's share of the averaged logits.
    weight: float = bounded(1.0, min=0)


@dataclass
class LossConfig:
    """A weighted sum of named loss terms; each term's own keys are checked by the term's dataclass."""

    terms: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainerConfig:
    """The training loop shared by every stage."""

    epochs: int = bounded(30, min=1)
    batch_size: int = bounded(128, min=1)
    eval_batch_size: int = bounded(512, min=1)
    device: str = "auto"  # auto: cuda, else mps, else cpu
    precision: Precision = Precision.auto
    label_smoothing: float = bounded(0.0, min=0, below=1)
    grad_clip: Optional[float] = bounded(None, above=0)
    # NHWC memory: +16-27% on this CPU and faster on an H100 (docs/performance.md).
    channels_last: bool = True
    # torch.compile: auto = on for CUDA (3.5x on an H100, docs/performance.md), off elsewhere; or true / false.
    compile: str = "auto"
    # auto = reduce-overhead (CUDA graphs: small CIFAR nets are launch-bound) on CUDA, default elsewhere.
    compile_mode: str = "auto"
    # Read losses back from the device every N steps: reading every step stalls an accelerator.
    log_every: int = bounded(50, min=1)
    # Cap on steps per epoch, for smoke tests and quick looks; null runs whole epochs.
    max_steps_per_epoch: Optional[int] = bounded(None, min=1)
    # Also save the full training state every N steps inside an epoch (long epochs: ImageNet is 10,000 steps);
    # resume=true then continues from that step, with the batches it would have seen.
    checkpoint_every_steps: Optional[int] = bounded(None, min=1)
    threads: Optional[int] = bounded(None, min=1)
    on_nan: OnNan = OnNan.stop
    # Processes training together on this machine: N > 1 starts torchrun itself (one process per GPU; on the CPU,
    # N processes with the gloo backend). batch_size stays the global batch (docs/distributed.md).
    devices: int = bounded(1, min=1)
    # Batch statistics over all processes' shares of the batch (CUDA only; the paper settings were one GPU's batch).
    sync_bn: bool = False
    # How long a process waits for the others (a collective, or rank 0 alone evaluating) before the job fails.
    dist_timeout_s: int = bounded(1800, min=10)


@dataclass
class OptimizerConfig:
    """The optimizer of the model being trained."""

    name: OptimizerName = OptimizerName.sgd
    lr: float = bounded(0.05, above=0)
    momentum: float = bounded(0.9, min=0, below=1)
    nesterov: bool = False
    weight_decay: float = bounded(5e-4, min=0)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class SchedulerConfig:
    """Learning-rate schedule over epochs, stepped per iteration."""

    name: SchedulerName = SchedulerName.step
    milestones: list[int] = field(default_factory=list)
    gamma: float = bounded(0.1, above=0)
    warmup_epochs: float = bounded(0.0, min=0)
    min_lr: float = bounded(0.0, min=0)


@dataclass
class PruneConfig:
    """The prune stage: structured channel removal (then KD fine-tuning) or unstructured sparsity."""

    method: PruneMethod = PruneMethod.structured
    importance: Importance = Importance.l1  # structured only
    global_pruning: bool = False  # rank channels across layers rather than within each
    # Transformers (ViT, DeiT, LeViT, TinyViT): this share of each attention layer's heads is removed whole (rounded,
    # one kept at least; in the first step of several) before channels are pruned to the target.
    head_ratio: float = bounded(0.0, min=0, below=1)
    # Every pruned channel group keeps a multiple of this many channels (8, 16: the widths CPUs' vector units and GPUs'
    # tensor cores run at full speed); null keeps any count, which lands nearest the MACs target.
    round_to: Optional[int] = bounded(None, min=1)
    # Structured target: a MACs ratio to reach, or (when set) a fixed channel ratio to remove instead.
    target_macs_ratio: float = bounded(0.5, above=0, below=1)
    channel_ratio: Optional[float] = bounded(None, above=0, below=1)
    sparsity: float = bounded(0.5, min=0, below=1)  # unstructured: fraction of conv/linear weights set to zero
    # Iterative pruning: reach the target in this many equal steps, fine-tuning after each one.
    steps: int = bounded(1, min=1)
    finetune_epochs: int = bounded(2, min=0)  # fine-tuning with the recipe's loss terms and teacher (structured: per step)
    finetune_lr: float = bounded(0.01, above=0)


@dataclass
class QuantizeConfig:
    """The quantize stage; its output folder is runs/<recipe>/<method>/."""

    method: QuantizeMethod = QuantizeMethod.int8_static
    source: QuantizeSource = QuantizeSource.auto
    backend: Int8Backend = Int8Backend.auto  # torch's int8 kernels
    per_channel: bool = True  # per-channel int8 weights (per-tensor when false)
    # onnx_int8: 7-bit weights. ONNX Runtime's u8 x s8 kernels on x86 CPUs without VNNI (AVX2) add pairs of products
    # in int16, which full 8-bit weights overflow (the bundled ResNet-20 agrees with fp32 on 92.7% of CIFAR-10's test
    # images, against 98.9% with 7 bits, at the same speed; docs/results.md). false: full 8-bit, for VNNI x86 or ARM.
    reduce_range: bool = True
    calibration_batches: int = bounded(8, min=1)  # training images seen by the observers: batches of calibration_batch_size
    calibration_batch_size: int = bounded(128, min=1)
    skip: list[str] = field(default_factory=list)  # layers kept in float (torch int8)
    qat_epochs: int = bounded(2, min=1)  # int8_qat: fake-quantized fine-tuning with the recipe's loss terms and teacher
    qat_lr: float = bounded(0.001, above=0)


@dataclass
class ExportConfig:
    """Deployment files written after the quantize stage."""

    onnx: bool = False  # runs/<recipe>/export/model.onnx: the float model quantize started from
    opset: int = bounded(18, min=13)


@dataclass
class EvaluateConfig:
    """How `distillctl evaluate` times each model on the CPU for the report."""

    # Batch-1 forward passes timed, after a fifth as many for warm-up; the report gives their median latency.
    latency_repeats: int = bounded(100, min=1)
    # Images per forward pass for throughput (the median of 7 passes, after 1 for warm-up). A large model at 224 px
    # takes minutes on a CPU at 256; a smaller batch measures sooner and a little lower.
    throughput_batch: int = bounded(256, min=1)


@dataclass
class DistillConfig:
    """How every stage that learns from the teacher (distill, prune fine-tuning, QAT) gets the teacher's outputs."""

    # Logit-only losses: the teacher's logits for each (image, crop, flip) of the resident loader, or for sampled
    # crops of the streaming loader, are kept on disk and reused by every later epoch, seed and run with the same
    # teacher and data (docs/performance.md).
    teacher_cache: TeacherCache = TeacherCache.auto
    teacher_cache_dir: str = "${dataset.cache_dir}/teacher-logits"
    teacher_cache_max_gb: float = bounded(4.0, above=0)  # larger caches are not used (auto) or refused (on)
    # float32 answers are the live teacher's bit for bit, so a cached run gives the uncached run's weights; float16
    # halves the size, and its rounding moved the quickstart's 3-seed mean by 2 points (docs/results.md).
    teacher_cache_half: bool = False
    # Streaming loader: the cache keeps this many sampled crops of each image (null: one per epoch of the run) and the
    # loader replays them, epoch e reading view e mod views; with the teacher's `topk` largest logits of each (null:
    # all; FKD keeps 10 of ImageNet's 1000).
    teacher_cache_views: Optional[int] = bounded(None, min=1)
    teacher_cache_topk: Optional[int] = bounded(10, min=1)


@dataclass
class SearchConfig:
    """`distillctl search`: Optuna trials over config values, each a distill run scored by its validation top-1."""

    # Config key -> {low, high[, log, step, type: int]} or {choices: [...]}; search=NAME picks a bundled space.
    space: dict[str, Any] = field(default_factory=dict)
    trials: int = bounded(20, min=1)  # trained trials (complete or pruned); trials over budget are not counted
    epochs: Optional[int] = bounded(None, min=1)  # each trial's training; null: trainer.epochs
    sampler: SamplerName = SamplerName.tpe
    pruner: PrunerName = PrunerName.median
    pruner_warmup_epochs: int = bounded(1, min=0)  # epochs every trial runs before it can be stopped
    # Budgets on the student, checked before a trial trains (one over budget never trains).
    max_latency_ms: Optional[float] = bounded(None, above=0)
    max_macs: Optional[float] = bounded(None, above=0)
    # A second objective to minimize beside validation top-1: the search then finds a Pareto front.
    minimize: Optional[SearchCost] = None
    # Where trials are stored; null: sqlite in <run_dir>/search/. A shared database URL lets many machines work on one study.
    storage: Optional[str] = None


@dataclass
class TensorBoardLogger:
    """logger=tensorboard: event files in each stage's folder (tensorboard --logdir runs)."""

    flush_secs: int = bounded(30, min=1)


@dataclass
class MlflowLogger:
    """logger=mlflow: one MLflow run per stage in the recipe's experiment."""

    # null: $MLFLOW_TRACKING_URI, else a SQLite store beside the recipe workspaces (runs/mlflow.db). A server:
    # http://host:5000; any database MLflow supports: postgresql://...
    tracking_uri: Optional[str] = None
    experiment: Optional[str] = None  # null: the recipe's name


@dataclass
class WandbLogger:
    """logger=wandb: one W&B run per stage, grouped by sweep, search or pipeline."""

    project: Optional[str] = None  # null: distillctl-<recipe>
    entity: Optional[str] = None
    # offline: written under each stage's wandb/ folder, uploaded later with `wandb sync`, so training never waits on
    # the network; online streams to the W&B server (after `wandb login`).
    mode: WandbMode = WandbMode.offline


@dataclass
class LoggerConfig:
    """Experiment trackers (logger=tensorboard, logger=[mlflow,wandb]); each stage also writes summary.csv."""

    tensorboard: Optional[TensorBoardLogger] = None
    mlflow: Optional[MlflowLogger] = None
    wandb: Optional[WandbLogger] = None


SEED_MAX = 2**32 - 1


@dataclass
class ReproduceConfig:
    """`distillctl reproduce`: the teacher, the recipe's student and the same student without a teacher, per seed."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    # The loss group the no-teacher baseline trains with; everything else is the recipe's.
    baseline_loss: str = "ce"


@dataclass
class PredictConfig:
    """`distillctl predict`: a model of the workspace (or any model file) on your own images."""

    # An image file or a folder of them (searched recursively); subfolders named after the model's classes label them.
    input: Optional[str] = None
    # auto: the model the recipe's pipeline ends with (its quantized student, else pruned, student, teacher); a stage
    # name (teacher, student, pruned, int8_static, onnx_int8, ...), or a .safetensors, .onnx or .pte file.
    model: str = "auto"
    topk: int = bounded(5, min=1, max=1000)  # classes listed per image, with their probabilities
    # The CSV written; null: <run_dir>/predict/<model>.csv, with a JSON summary beside it.
    output: Optional[str] = None


@dataclass
class Config:
    """A whole experiment: what a recipe plus overrides resolves to."""

    description: str = ""
    run_dir: str = "runs/${hydra:runtime.choices.recipe}"
    # What every random generator starts from; numpy's (Optuna's samplers) take 0 to 2**32 - 1.
    seed: int = bounded(0, min=0, max=SEED_MAX)
    force: bool = False
    resume: bool = False
    # A stage another run is writing: wait for that run to end instead of refusing (exit 2).
    wait: bool = False
    # pipeline, reproduce, search: a stage that another workspace beside this one (runs/<other recipe>, its
    # reproduce seeds, another job of the sweep) finished with this very config, inputs and data is linked from there
    # rather than trained again; false trains it here.
    reuse: bool = True
    # pipeline, reproduce: say what each stage would do (skip, resume, run) and why, and train or write nothing.
    dry_run: bool = False
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    teacher: ModelConfig = field(default_factory=lambda: ModelConfig(name="resnet56"))
    student: ModelConfig = field(default_factory=ModelConfig)
    # Multi-teacher distillation: when set, these (each with a checkpoint) replace `teacher` in distill.
    teachers: list[ModelConfig] = field(default_factory=list)
    loss: LossConfig = field(default_factory=LossConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    reproduce: ReproduceConfig = field(default_factory=ReproduceConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    # Thresholds a run must meet, e.g. {"student": {"top1": {"min": 0.85}}} (a recipe may write "student.top1"; it is
    # stored nested, see composition.nested_thresholds); evaluate exits 1 on a miss. `baseline.*`
    # (the student without a teacher) and `gain.*` (student less baseline) are checked by `distillctl reproduce`.
    expect: dict[str, Any] = field(default_factory=dict)
    # What the recipe's smoke profile (profile=smoke) must reach; by default every stage's model exists and evaluates.
    smoke_expect: dict[str, Any] = field(default_factory=lambda: {
        model: {"top1": {"min": 0.0}} for model in ("teacher", "student", "pruned", "int8_static")
    })


def bundled_weights(name: str) -> str:
    """The path of a weights file shipped with distillctl: what `${bundled:NAME}` resolves to."""
    return str(BUNDLED_WEIGHTS / name)


def register() -> None:
    """Put the schema into Hydra's ConfigStore under the name config.yaml starts its defaults with, the loss
    terms' option dataclasses under loss/terms, and the `bundled` and `pretrained` resolvers (all without importing
    torch)."""
    from distillctl.losses import params
    from distillctl.pretrained_data import pretrained_setting

    params.register()
    ConfigStore.instance().store(name="schema", node=Config)
    OmegaConf.register_new_resolver("bundled", bundled_weights, replace=True)
    OmegaConf.register_new_resolver("pretrained", pretrained_setting, replace=True)
