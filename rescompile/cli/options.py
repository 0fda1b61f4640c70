"""Options that more than one command takes, declared once so that each reads the same in every --help,
and the titles of the help panels that group them.

Help strings are one short sentence, plain text (no Rich markup). A default that is not a plain value
(None meaning "the model's own data", say) is described by show_default, never inside the help string.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from rescompile.cli._prep import ChannelOrder, DataFormat
from rescompile.config import CalibMethod, Optimizer, Schedule

# -- panel titles, most-used first where a command has several --------------------------------------
MODEL = "Model"
OUTPUT = "Output"
DATA = "Data and preprocessing"
CALIBRATION = "Calibration"
ENGINE = "TensorRT engine"
ONNX = "ONNX"
BENCHMARK = "Benchmark"
TIMING = "Timing"
ACCURACY = "Accuracy"
TRAINING = "Training"
OPTIMIZER = "Optimizer and schedule"


# -- options whose panel or shown default differs by command: same words, one declaration ---------
def output_dir(default: str | None = None) -> Any:
    return typer.Option(
        "--output-dir", "-o", file_okay=False, metavar="<dir>", help="Folder to write the results to.",
        show_default=default or False, rich_help_panel=OUTPUT,
    )


def output_file() -> Any:
    return typer.Option("--output", "-o", dir_okay=False, metavar="<file>", help="ONNX file to write.", rich_help_panel=OUTPUT)


def eval_data(panel: str = DATA) -> Any:
    return typer.Option(
        "--eval-data", metavar="<data>", help="Labelled images for the accuracy check.",
        show_default="the model's test split", rich_help_panel=panel,
    )


def threads(panel: str | None = None) -> Any:
    return typer.Option(min=1, metavar="<n>", help="CPU threads to use.", show_default="all cores", rich_help_panel=panel)


def device(panel: str | None = None) -> Any:
    return typer.Option(metavar="<device>", help="Where PyTorch runs: auto, cpu, cuda or cuda:N.", rich_help_panel=panel)


Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout instead of tables.", rich_help_panel=OUTPUT)]

# -- the model to read (build, calibrate, export) ----------------------------------------------------
MODEL_HELP = "Architecture name, checkpoint (.pt/.pth), TorchScript or ONNX file."
ModelArg = Annotated[str, typer.Argument(metavar="MODEL", help=MODEL_HELP, show_default=False)]
Arch = Annotated[
    str | None,
    typer.Option("--arch", "-a", metavar="<name>", help="Architecture of a plain state-dict checkpoint.", rich_help_panel=MODEL),
]
NumClasses = Annotated[
    int | None, typer.Option(min=1, metavar="<n>", help="Number of classes, when the file does not say.", rich_help_panel=MODEL)
]
ModelInputSize = Annotated[
    int | None, typer.Option("--input-size", min=8, metavar="<px>", help="Input size, when the file does not say.", rich_help_panel=MODEL)
]
TrustCheckpoint = Annotated[
    bool, typer.Option(help="Fully unpickle the checkpoint (runs its code): trusted files only.", rich_help_panel=MODEL)
]

# -- data and preprocessing (build, calibrate) -------------------------------------------------------
CalibData = Annotated[
    str | None,
    typer.Option(
        "--data", "--calib-data", metavar="<data>", help="Calibration images: a folder, digits, cifar10 or .npy/.npz.",
        show_default="the model's training data", rich_help_panel=DATA,
    ),
]
EvalData = Annotated[str | None, eval_data()]
DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", metavar="<dir>", help="cifar10: the folder holding cifar-10-batches-py (or -bin).", rich_help_panel=DATA),
]
Format = Annotated[
    DataFormat,
    typer.Option(
        "--data-format", case_sensitive=False, metavar="<format>",
        help="Read .npy/.npz as images, input tensors or auto.",
        rich_help_panel=DATA,
    ),
]
Mean = Annotated[
    str | None,
    typer.Option(
        "--mean", metavar="<r,g,b>", help="Per-channel mean in 0-1 or 0-255 units, for a model without metadata.",
        show_default="ImageNet's", rich_help_panel=DATA,
    ),
]
Std = Annotated[
    str | None, typer.Option("--std", metavar="<r,g,b>", help="Per-channel std, in the units of --mean.", rich_help_panel=DATA)
]
Scale = Annotated[
    float | None,
    typer.Option(
        "--scale", min=0.0, metavar="<1|255>", help="Pixel range the model takes: 1 or 255 (alone: no mean and std).",
        rich_help_panel=DATA,
    ),
]
Resize = Annotated[
    int | None,
    typer.Option("--resize", min=8, metavar="<px>", help="Resize the shorter side to this, then center-crop.", rich_help_panel=DATA),
]
CenterCrop = Annotated[
    int | None,
    typer.Option("--center-crop", min=8, metavar="<px>", help="Center-crop to this size, the model's input size.", rich_help_panel=DATA),
]
Order = Annotated[
    ChannelOrder | None,
    typer.Option(
        "--channel-order", case_sensitive=False, metavar="<rgb|bgr>", help="Channel order the model takes; bgr for Caffe-style models.",
        rich_help_panel=DATA,
    ),
]

# -- INT8 calibration (build, calibrate) -------------------------------------------------------------
Method = Annotated[
    CalibMethod,
    typer.Option(
        "--method", case_sensitive=False, metavar="<method>",
        help="entropy (TensorRT's), max, percentile, mse, or auto (try each).", rich_help_panel=CALIBRATION,
    ),
]
NumImages = Annotated[
    int, typer.Option(min=1, metavar="<n>", help="Calibration images; TensorRT advises 500 or more.", rich_help_panel=CALIBRATION)
]
MaxDrop = Annotated[
    float | None,
    typer.Option(
        "--max-accuracy-drop", min=0.0, metavar="<pts>", help="Keep sensitive layers in float until top-1 drops at most this much.",
        rich_help_panel=CALIBRATION,
    ),
]
Fallback = Annotated[
    bool,
    typer.Option(
        "--fallback/--no-fallback", help="On poor INT8 accuracy, try the other calibrators, then float layers.",
        rich_help_panel=CALIBRATION,
    ),
]
Percentile = Annotated[
    float, typer.Option(min=50.0, max=100.0, metavar="<pct>", help="Percentile that --method percentile keeps.", rich_help_panel=CALIBRATION)
]
CalibBatch = Annotated[
    int, typer.Option("--batch-size", min=1, metavar="<n>", help="Images per calibration batch, which bounds memory.", rich_help_panel=CALIBRATION)
]
Sensitivity = Annotated[
    bool, typer.Option(help="Report what quantizing each Conv alone costs in accuracy.", rich_help_panel=CALIBRATION)
]
TrtVersion = Annotated[
    str, typer.Option(metavar="<version>", help="TensorRT version the calibration cache is for.", rich_help_panel=CALIBRATION)
]

# -- training (train, compare) -----------------------------------------------------------------------
Dataset = Annotated[
    str,
    typer.Option(
        "--dataset", "-d", metavar="<data>", help="digits, cifar10, an image folder (a sub-folder per class) or .npy/.npz.",
        rich_help_panel=DATA,
    ),
]
Download = Annotated[bool, typer.Option(help="cifar10: download into --data-dir if missing (needs network).", rich_help_panel=DATA)]
Augment = Annotated[bool, typer.Option(help="Random shifts, and flips where labels allow.", rich_help_panel=DATA)]
TrainInputSize = Annotated[
    int | None,
    typer.Option("--input-size", min=8, metavar="<px>", help="Resize images to this square size.", show_default="the dataset's", rich_help_panel=DATA),
]
MaxTrain = Annotated[
    int | None, typer.Option(min=1, metavar="<n>", help="Train on a fixed subset of this many images.", rich_help_panel=DATA)
]
Epochs = Annotated[int, typer.Option(min=1, metavar="<n>", help="Training epochs.", rich_help_panel=TRAINING)]
BatchSize = Annotated[int, typer.Option(min=1, metavar="<n>", help="Images per training step.", rich_help_panel=TRAINING)]
Seed = Annotated[int, typer.Option(metavar="<n>", help="Random seed for weights, shuffling and augmentation.", rich_help_panel=TRAINING)]
Opt = Annotated[
    Optimizer,
    typer.Option("--optimizer", case_sensitive=False, metavar="<name>", help="sgd (with momentum), adam or adamw.", rich_help_panel=OPTIMIZER),
]
Lr = Annotated[
    float | None,
    typer.Option(metavar="<rate>", help="Peak learning rate.", show_default="0.1 for SGD, 1e-3 for Adam", rich_help_panel=OPTIMIZER),
]
Momentum = Annotated[float, typer.Option(metavar="<m>", help="SGD momentum.", rich_help_panel=OPTIMIZER)]
Nesterov = Annotated[bool, typer.Option(help="Nesterov momentum for SGD.", rich_help_panel=OPTIMIZER)]
WeightDecay = Annotated[
    float, typer.Option(metavar="<wd>", help="L2 weight decay on conv and linear weights, not BN or biases.", rich_help_panel=OPTIMIZER)
]
Sched = Annotated[
    Schedule,
    typer.Option(
        "--schedule", case_sensitive=False, metavar="<name>", help="Learning-rate schedule after warmup: cosine, step or constant.",
        rich_help_panel=OPTIMIZER,
    ),
]
Milestones = Annotated[
    str, typer.Option(metavar="<fractions>", help="step schedule: where the rate drops, as fractions of training.", rich_help_panel=OPTIMIZER)
]
Gamma = Annotated[float, typer.Option(metavar="<x>", help="step schedule: rate multiplier at each milestone.", rich_help_panel=OPTIMIZER)]
Warmup = Annotated[int, typer.Option(min=0, metavar="<n>", help="Epochs of linear learning-rate warmup.", rich_help_panel=OPTIMIZER)]
Smoothing = Annotated[float, typer.Option(metavar="<x>", help="Label smoothing; 0 turns it off.", rich_help_panel=OPTIMIZER)]
ZeroInit = Annotated[bool, typer.Option(help="Zero-initialise the last BN gamma of each residual branch.", rich_help_panel=MODEL)]
Pretrained = Annotated[
    bool, typer.Option(help="torchvision architectures: start from ImageNet weights (needs network or cache).", rich_help_panel=MODEL)
]

# -- ONNX graph work (export, optimize) --------------------------------------------------------------
Simplify = Annotated[bool, typer.Option(help="Simplify the graph with onnxsim.", rich_help_panel=ONNX)]
Check = Annotated[bool, typer.Option(help="Compare ONNX Runtime outputs with the input model's.", rich_help_panel=ONNX)]
